"""MIC: the block mask (ratio, patch alignment, determinism), the masked-image loss against its formula, the loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import pseudo_labelled_step, tiny_config
from udaseg.data import transforms as T
from udaseg.data.labels import IGNORE_INDEX
from udaseg.methods.base import Step
from udaseg.methods.mic import MIC, MICOptions, block_mask, mask_image, patch_size_for
from udaseg.models import upsample
from udaseg.models.common import IMAGENET_MEAN

C = 4


@pytest.mark.parametrize(
    ("size", "patch", "reference", "expected"),
    [
        ((512, 512), 64, 512, 64),  # MIC's setting
        ((128, 256), 64, 512, 16),  # the synthetic benchmark's crop: the same 8 patches along the short side
        ((1024, 2048), 64, 512, 64),  # never scaled up (HRDA's crops keep b = 64)
        ((5, 9), 64, 512, 1),  # at least one pixel
        ((128, 256), 64, 0, 64),  # reference 0: b fixed
    ],
)
def test_patch_size_scales_with_the_short_crop_side(size, patch, reference, expected):
    assert patch_size_for(size, patch, reference) == expected


@pytest.mark.parametrize(("h", "w", "patch"), [(20, 33, 4), (16, 16, 16), (7, 5, 3)])
def test_block_mask_is_one_draw_per_aligned_patch(h, w, patch):
    """visible[b, y, x] = v[b, y // p, x // p] > r with v the generator's next uniforms: patches start at (0, 0)."""
    got = block_mask(3, (h, w), patch, 0.6, torch.Generator().manual_seed(5))
    v = torch.rand(3, math.ceil(h / patch), math.ceil(w / patch), generator=torch.Generator().manual_seed(5))
    for b in range(3):
        for y in range(h):
            for x in range(w):
                assert bool(got[b, y, x]) == bool(v[b, y // patch, x // patch] > 0.6)
    assert got.shape == (3, h, w) and got.dtype == torch.bool


def test_block_mask_hides_the_ratio_of_patches():
    visible = block_mask(4, (256, 256), 2, 0.7, torch.Generator().manual_seed(0))  # 4 x 128 x 128 patches
    assert abs((1 - visible.float().mean().item()) - 0.7) < 0.01  # 65,536 Bernoulli(0.7): sd 0.0018
    assert block_mask(2, (8, 8), 2, 0.0, torch.Generator().manual_seed(0)).all()  # ratio 0: nothing hidden


def test_block_mask_is_a_function_of_the_step_generator():
    a = block_mask(2, (32, 64), 4, 0.7, torch.Generator().manual_seed(11))
    b = block_mask(2, (32, 64), 4, 0.7, torch.Generator().manual_seed(11))
    c = block_mask(2, (32, 64), 4, 0.7, torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_hidden_pixels_take_the_normalisation_mean():
    image = torch.rand(2, 3, 6, 7)
    visible = torch.rand(2, 6, 7) > 0.5
    out = mask_image(image, visible)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1)
    assert torch.equal(out.permute(1, 0, 2, 3)[:, visible], image.permute(1, 0, 2, 3)[:, visible])
    assert torch.equal(out.permute(1, 0, 2, 3)[:, ~visible], mean.expand(3, int((~visible).sum())))


def fake_step(seed=1, b=2, h=16, w=32) -> Step:
    """A step after self_training's hooks: pseudo-labels (some ignored) with a per-image quality weight (DAFormer)."""
    weight = torch.rand(b, 1, 1, generator=torch.Generator().manual_seed(seed + 100)).expand(b, h, w)
    return pseudo_labelled_step(C, seed, b, h, w, pseudo_weight=weight)


@pytest.mark.parametrize("strong_view", [False, True])
def test_masked_loss_is_the_weighted_pseudo_label_ce_of_the_masked_target(strong_view):
    step = fake_step()
    m = MIC(MICOptions(patch_size=16, reference_size=64, weight=0.8, strong_view=strong_view), num_classes=C)
    loss = m.losses(step)["masked_ce"]
    # direct formula, replaying the step's random stream: [strong view], then one uniform per 4 x 4 patch
    g = torch.Generator().manual_seed(1)
    image = T.strong_view(step.target_image, g) if strong_view else step.target_image
    v = torch.rand(2, 4, 8, generator=g)  # patch 16 * 16 / 64 = 4 on a 16 x 32 crop
    visible = (v > 0.7).repeat_interleave(4, 1).repeat_interleave(4, 2)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    masked = torch.where(visible[:, None], image, mean)
    logits = upsample(step.student(masked)["logits"], (16, 32))
    ce = F.cross_entropy(logits, step.pseudo_label, ignore_index=IGNORE_INDEX, reduction="none")  # (B, H, W)
    labelled = step.pseudo_label != IGNORE_INDEX
    expected = 0.8 * (ce * step.pseudo_weight)[labelled].sum() / labelled.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert step.metrics["mic/hidden"] == pytest.approx(1 - visible.float().mean().item())
    loss.backward()
    assert all(p.grad is not None for p in step.student.classifier.parameters())


def test_masked_images_do_not_move_batchnorm_statistics_unless_asked():
    """The teacher (EMA of the student's buffers) and evaluation use the running statistics: masked images, 70 %
    one colour, would pull them away from real images. The gradient is the same either way."""
    grads = {}
    for masked_norm_stats in (False, True):
        step = fake_step()
        step.student.train()
        stats = {k: v.clone() for k, v in step.student.state_dict().items() if "running" in k or "num_batches" in k}
        assert stats, "the test needs a model with BatchNorm"
        o = MICOptions(patch_size=16, reference_size=64, masked_norm_stats=masked_norm_stats)
        MIC(o, num_classes=C).losses(step)["masked_ce"].backward()  # backward after the buffers were put back
        after = step.student.state_dict()
        assert all(torch.equal(after[k], v) for k, v in stats.items()) is (not masked_norm_stats)
        grads[masked_norm_stats] = [p.grad.clone() for p in step.student.parameters()]
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_target_no_loss_and_bad_options_are_rejected():
    step = fake_step()
    step.target_image = None
    assert MIC(num_classes=C).losses(step) == {}
    with pytest.raises(ValueError, match="mask_ratio"):
        MIC(MICOptions(mask_ratio=1.0))
    with pytest.raises(ValueError, match="patch_size"):
        MIC(MICOptions(patch_size=0))


def test_composes_with_dida_through_the_loop(tmp_path):
    """dida+mic: DIDA relabels, MIC learns the masked view from those labels; both terms logged, both finite."""
    import json

    from udaseg.train import train

    result = train(tiny_config("dida+mic", **{"data.rcs": False}), tmp_path)
    assert math.isfinite(result["miou"])
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    adapt = [r for r in rows if r.get("stage") == "adapt"]
    keys = set(adapt[-1])
    assert any(k.endswith("masked_ce") for k in keys) and any(k.endswith("instance") for k in keys)
    assert all(math.isfinite(v) for r in adapt for k, v in r.items() if k.endswith("masked_ce"))


@pytest.mark.parametrize("other", ["cpsl", "hiast", "tdi", "diga"])
def test_composes_with_every_seed_method(tmp_path, other):
    """MIC after each of the other plug-ins (dida above): the run ends finite, with both plug-ins' terms logged."""
    import json

    from udaseg.train import train

    result = train(tiny_config(f"{other}+mic", **{"data.rcs": False}), tmp_path)
    assert math.isfinite(result["miou"])
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    keys = {k for r in rows if r.get("stage") == "adapt" for k in r}
    assert "mic/masked_ce" in keys and any(k.startswith(f"{other}/") for k in keys), sorted(keys)
