"""The plug-in contract, for every registered method: state survives a weights_only round trip and a resumed method
continues exactly; the torch and Triton kernels train alike; a new method is one class plus its registration."""

import io
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, assert_states_equal, tiny_config, triton_kernels_present
from udaseg.methods import REGISTRY, Method, Step, build_methods, register_method, resolve_warmup
from udaseg.models import build_model
from udaseg.train import train_step

C = 4
SMALL = {  # small state, so the round trip is quick; every other option at its default
    "dida": {"embed_dim": 8, "bank_per_class": 4, "writes_per_class": 2, "bank_threshold": 0.0},
    "cpsl": {"embed_dim": 8, "queue_size": 24, "pixels_per_image": 8},
    "hiast": {"pool_size": 2},
    "tdi": {"pixels": 16},
    "mic": {"patch_size": 4, "reference_size": 0},
}


def make_step(seed: int, student, teacher) -> Step:
    g = torch.Generator().manual_seed(seed)
    return Step(
        iteration=seed,
        source_image=torch.rand(2, 3, 32, 48, generator=g),
        source_label=torch.randint(0, C, (2, 32, 48), generator=g),
        target_image=torch.rand(2, 3, 32, 48, generator=g),
        generator=torch.Generator().manual_seed(seed),
        student=student,
        teacher=teacher,
    )


def drive(methods: list[Method], step: Step) -> None:
    """One step as the loop runs it (udaseg.train.train_step: every hook in order), backward, then update."""
    sum(train_step(step, methods).values()).backward()
    for m in methods:
        m.update(step)


def models(seed: int = 0):
    torch.manual_seed(seed)
    student = build_model("compact", num_classes=C, width=8)
    return student, build_model("compact", num_classes=C, width=8).requires_grad_(False)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_state_round_trips_and_resumed_methods_continue_exactly(name):
    """Two steps, state_dict -> torch.save -> torch.load(weights_only=True) -> a fresh instance: equal state; one
    more identical step on both: still equal. What a method learns is all in state_dict (heads: modules())."""
    student, teacher = models()
    build = lambda: build_methods(name, SMALL, C, student.feature_dim, "cpu")  # noqa: E731
    torch.manual_seed(1)
    first = build()
    for seed in (1, 2):
        drive(first, make_step(seed, student, teacher))
    buf = io.BytesIO()
    torch.save([m.state_dict() for m in first], buf)
    buf.seek(0)
    second = build()
    for m, state, src in zip(second, torch.load(buf, weights_only=True), first):
        m.load_state_dict(state)
        for key, module in m.modules().items():  # trainable heads are checkpointed by the loop, with the model
            module.load_state_dict(src.modules()[key].state_dict())
    assert_states_equal([m.state_dict() for m in first], [m.state_dict() for m in second])
    for methods in (first, second):
        drive(methods, make_step(3, student, teacher))  # the same weights, inputs and random stream
    assert_states_equal([m.state_dict() for m in first], [m.state_dict() for m in second])


def uses_kernels(name: str) -> bool:
    module = sys.modules[REGISTRY[name].__module__]
    return any(getattr(v, "__module__", "").startswith("udaseg.kernels") for v in vars(module).values())


# one subprocess each (~30 s under the interpreter); the last one runs DiGA's warm-up stage too
KERNEL_RUNS = {"dida": {}, "cpsl": {}, "hiast+diga+tdi": {"train.warmup": "diga", "methods.tdi.pixels": 64}}


def test_every_method_that_calls_a_kernel_is_compared():
    covered = {n for spec in KERNEL_RUNS for n in spec.split("+")}
    covered |= {resolve_warmup(o["train.warmup"]) for o in KERNEL_RUNS.values() if "train.warmup" in o}
    assert {n for n in REGISTRY if uses_kernels(n)} <= covered


@pytest.mark.skipif(not triton_kernels_present(), reason="triton is not installed: no Triton kernel can run")
@pytest.mark.parametrize("spec", KERNEL_RUNS)
def test_triton_kernels_train_like_torch(spec, tmp_path):
    """--kernels triton vs torch from one checkpoint taken after the first adaptation step (state filled)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    overrides = json.dumps({"data.rcs": False, **KERNEL_RUNS[spec]})
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests/methods/compare_kernels.py"), spec, str(tmp_path), overrides],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["iterations"] == 2, result
    if spec == "dida":  # the bank is not empty, so the instance term is a real kernel result, not 0 vs 0
        assert result["start"]["dida.bank_entries"] > 0 and result["first_step"]["dida/instance"] > 0, result
    if spec == "cpsl":
        assert result["start"]["cpsl.queue_filled"] > 0, result
    assert result["first_step_rel_diff"] < 1e-4, result  # same weights, state and inputs: float32 rounding only
    # the next step: Adam turns ulp-level gradient differences of near-zero components into lr-sized steps
    assert result["loss_diff"] < 1e-2 and result["state_diff"] < 2e-2, result


# ----------------------------------------------------------------------------- a new method is one class
class EntropyCounter(Method):
    """A toy plug-in: entropy minimisation on the mixed batch, and a step counter as its state."""

    name = "toy_entropy"
    requires = ("self_training",)

    def __init__(self, options=None, num_classes: int = 19, feature_dim: int = 0, device: str = "cpu"):
        super().__init__(options, num_classes, feature_dim, device)
        self.steps = 0

    def losses(self, step: Step) -> dict[str, torch.Tensor]:
        p = step.student_mix["logits"].softmax(1)  # (B, C, H, W)
        return {"entropy": 0.1 * -(p * p.clamp(min=1e-12).log()).sum(1).mean()}

    def update(self, step: Step) -> None:
        self.steps += 1

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])


@pytest.fixture
def toy_method():
    register_method(EntropyCounter)
    yield EntropyCounter.name
    REGISTRY.pop(EntropyCounter.name)


def test_a_new_method_is_one_class_and_its_registration(toy_method, tmp_path):
    from udaseg.train import train

    result = train(tiny_config(toy_method, **{"data.rcs": False}), tmp_path)
    assert math.isfinite(result["miou"])
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    adapt = [r for r in rows if r.get("stage") == "adapt"]
    assert len(adapt) == 3 and all(r["toy_entropy/entropy"] > 0 for r in adapt)
    state = torch.load(tmp_path / "last.pt", weights_only=True)["methods"]["toy_entropy"]
    assert state == {"steps": 3}  # checkpointed with the run, like every method's state


def test_warmup_names_come_from_the_plugins():
    """`--warmup` values map to the plug-ins that declare `warmup = True`; anything else is a ConfigError."""
    from udaseg.config import ConfigError

    assert resolve_warmup("source_only") == "source_only" and resolve_warmup("diga") == "diga_warmup"
    assert resolve_warmup("diga_warmup") == "diga_warmup"  # the registered name works too
    assert {REGISTRY[n].warmup for n in ("source_only", "diga_warmup")} == {True} and not REGISTRY["dida"].warmup
    with pytest.raises(ConfigError, match=r"train.warmup='dida' is not a warm-up; valid: diga, source_only"):
        resolve_warmup("dida")
