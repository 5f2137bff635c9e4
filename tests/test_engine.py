import numpy as np
import pytest
import torch
from torch import nn

from udaseg.engine.data import StepSampler, rcs_tables
from udaseg.engine.optim import ema_update, lr_factor
from udaseg.engine.state import capture_rng, restore_rng
from udaseg.methods.base import REGISTRY, Method, register_method, resolve_names


def test_step_sampler_is_a_function_of_iteration():
    whole = list(StepSampler(17, 3, 0, 10, seed=5, stream=1))
    tail = list(StepSampler(17, 3, 6, 10, seed=5, stream=1))
    assert whole[6 * 3 :] == tail
    other_rank = list(StepSampler(17, 3, 0, 10, seed=5, stream=1, rank=1))
    assert whole != other_rank
    assert all(0 <= i < 17 for i, _, _ in whole)


def test_rcs_tables_follow_daformer_rule():
    counts = np.array([[100, 0, 5], [100, 60, 0], [100, 0, 0]])  # class 2 never passes min_pixels=10
    probs, images = rcs_tables(counts, temperature=0.5, min_pixels=10)
    freq = counts.sum(0) / counts.sum()
    expected = np.exp((1 - freq[:2]) / 0.5)
    assert probs[2] == 0 and images == [[0, 1, 2], [1], []]
    assert np.allclose(probs[:2], expected / expected.sum())
    sampler = StepSampler(3, 4, 0, 200, seed=0, stream=1, class_probs=probs, class_images=images)
    drawn = [c for _, _, c in sampler]
    assert 2 not in drawn
    assert abs(np.mean(np.array(drawn) == 1) - probs[1]) < 0.05


def test_lr_schedule():
    assert lr_factor(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_factor(50, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, 1.0) == 0.0


def test_ema_update_matches_formula():
    torch.manual_seed(0)
    student, teacher = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    student.weight.data.normal_()
    student.running_mean.normal_()
    t0 = teacher.weight.detach().clone()
    ema_update(teacher, student, momentum=0.9, steps=100)
    assert torch.allclose(teacher.weight, 0.9 * t0 + 0.1 * student.weight)
    assert torch.allclose(teacher.running_mean, 0.1 * student.running_mean)
    ema_update(teacher, student, momentum=0.9, steps=0)  # the ramp: m = 0 at the first step copies the student
    assert torch.allclose(teacher.weight, student.weight)


def test_rng_state_roundtrip():
    state = capture_rng()
    a = (torch.rand(3), np.random.rand(2))  # noqa: NPY002 (the legacy global stream is what is saved)
    restore_rng(state)
    b = (torch.rand(3), np.random.rand(2))  # noqa: NPY002 (the legacy global stream is what is saved)
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_resolve_names_puts_requirements_first():
    class _Needy(Method):
        name = "_test_needy"
        requires = ("self_training",)

    try:
        register_method(_Needy)
        assert resolve_names("_test_needy") == ["self_training", "_test_needy"]
        assert resolve_names("self_training+_test_needy") == ["self_training", "_test_needy"]
        with pytest.raises(ValueError, match="unknown method 'nope'"):
            resolve_names("self_training+nope")
        with pytest.raises(ValueError, match="source_only cannot be combined"):
            resolve_names("source_only+self_training")
    finally:
        REGISTRY.pop("_test_needy", None)


def test_ema_leaves_non_persistent_constants_alone():
    from udaseg.models import build_model

    student, teacher = build_model("compact", width=8), build_model("compact", width=8)
    before = teacher.normalize.inv_std.clone()
    for step in range(5):
        ema_update(teacher, student, momentum=0.99, steps=step + 10)
    assert torch.equal(teacher.normalize.inv_std, before)  # bitwise: resume rebuilds these constants exactly
