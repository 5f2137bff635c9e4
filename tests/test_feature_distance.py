"""ImageNet feature distance (udaseg/engine/feature_distance.py): the cell labels, the masked distance, the config
rules, and the term in a training run, against direct formulas."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import check_resume_exact, tiny_config
from udaseg.config import ConfigError, validate
from udaseg.engine.feature_distance import FeatureDistance, downscale_label, masked_distance, thing_mask
from udaseg.models import build_model
from udaseg.train import train

IGNORE = 255


def _direct_cells(label: torch.Tensor, scale: int, min_ratio: float, num_classes: int) -> torch.Tensor:
    """Cell by cell: count each class (ignore as its own) in the scale x scale window, keep the majority if its
    share is >= min_ratio and it is a real class."""
    b, h, w = label.shape
    out = torch.full((b, h // scale, w // scale), IGNORE, dtype=torch.int64)
    for n in range(b):
        for i in range(h // scale):
            for j in range(w // scale):
                cell = label[n, i * scale : (i + 1) * scale, j * scale : (j + 1) * scale].flatten()
                cell = torch.where((cell < 0) | (cell >= num_classes), num_classes, cell)
                counts = torch.bincount(cell, minlength=num_classes + 1).double()
                share, cls = (counts / cell.numel()).max(0)  # first maximum, as torch.max
                if cls.item() != num_classes and share.item() >= min_ratio:
                    out[n, i, j] = cls
    return out


@pytest.mark.parametrize("size,scale", [((37, 53), 4), ((32, 32), 8), ((9, 7), 3)])
def test_downscale_label_matches_the_direct_count(size, scale):
    g = torch.Generator().manual_seed(0)
    # few classes, so many cells reach the ratio; ignored pixels mixed in
    label = torch.randint(0, 3, (2, *size), generator=g)
    label[:, : size[0] // 2] = 1  # a large uniform area: whole cells of one class
    label[torch.rand(label.shape, generator=g) < 0.1] = IGNORE
    for ratio in (0.5, 0.75, 1.0):
        got = downscale_label(label, scale, ratio, num_classes=3)
        assert torch.equal(got, _direct_cells(label, scale, ratio, 3)), f"ratio {ratio}"
    assert (downscale_label(label, scale, 0.75, 3) != IGNORE).any(), "the test needs some labelled cells"


def test_masked_distance_is_the_mean_l2_over_masked_cells_and_zero_without_any():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 5, 6, 7, generator=g, requires_grad=True)
    r = torch.randn(2, 5, 6, 7, generator=g)
    mask = torch.rand(2, 5, 6, generator=g) < 0.4  # smaller than the maps: both are cut to it
    got = masked_distance(s, r, mask)
    direct = [((s[n, :, i, j] - r[n, :, i, j]) ** 2).sum().sqrt() for n, i, j in mask.nonzero().tolist()]
    assert torch.allclose(got, torch.stack(direct).mean())
    got.backward()
    assert s.grad[:, :, 5:, :].abs().sum() == 0 and s.grad[:, :, :, 6:].abs().sum() == 0, "cut cells get no gradient"
    empty = masked_distance(s, r, torch.zeros(2, 5, 6, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad, "no thing pixel: 0, still part of the graph (no NaN)"


def test_thing_mask_keeps_only_the_listed_classes():
    label = torch.full((1, 16, 16), 0)
    label[0, :8, :8] = 13  # car
    label[0, 8:, 8:] = 11  # person
    mask = thing_mask(label, (4, 4), classes=[13], min_ratio=0.75, num_classes=19)
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, :2, :2] = True
    assert torch.equal(mask, expected)


def test_loss_compares_the_student_with_the_frozen_reference_encoder():
    torch.manual_seed(0)
    model = build_model("compact", num_classes=19, width=8).eval()
    fd = FeatureDistance(build_model("compact", num_classes=19, width=8), 0.5, [13], 0.75, 19)
    fd.reference.load_state_dict(model.state_dict())
    image = torch.rand(2, 3, 64, 64)
    label = torch.full((2, 64, 64), 13)
    same = fd.loss(model(image)["encoder"], image, label)
    assert same.item() == pytest.approx(0.0, abs=1e-6), "the student equal to the reference: no distance"
    with torch.no_grad():
        next(model.parameters()).add_(0.1)
    moved = fd.loss(model(image)["encoder"], image, label)
    direct = 0.5 * torch.linalg.vector_norm(model.encode(image) - fd.reference.encode(image), dim=1).mean()
    assert moved.item() == pytest.approx(direct.item(), rel=1e-5) and moved.item() > 0
    assert not any(p.requires_grad for p in fd.reference.parameters()), "the reference stays frozen"


@pytest.mark.parametrize("name", ["compact", "segformer_mitb0", "deeplabv2_r101"])
def test_models_return_their_encoder_map(name):
    kw = {"width": 8} if name == "compact" else {}
    model = build_model(name, num_classes=5, **kw).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out, enc = model(x), model.encode(x)
    assert torch.equal(out["encoder"], enc)


def test_config_needs_pretrained_weights_and_valid_options():
    with pytest.raises(ConfigError, match=r"feature_distance.weight=0.005 needs model.pretrained"):
        validate(tiny_config(**{"feature_distance.weight": 0.005}))
    with pytest.raises(ConfigError, match=r"feature_distance.min_ratio=0"):
        validate(tiny_config(**{"feature_distance.min_ratio": 0}))
    with pytest.raises(ConfigError, match=r"feature_distance.classes"):
        validate(tiny_config(**{"feature_distance.classes": "[]"}))


def _pretrained(tmp_path) -> str:
    torch.manual_seed(3)
    path = tmp_path / "imagenet.pth"
    torch.save(build_model("compact", num_classes=19, width=8).state_dict(), path)
    return str(path)


def test_training_logs_the_term_in_both_stages_and_resumes_exactly(tmp_path):
    cfg = tiny_config(
        "self_training",
        **{
            "model.pretrained": _pretrained(tmp_path),
            "feature_distance.weight": 0.5,
            "feature_distance.classes": "[0, 1, 2, 13]",
        },
    )
    train(cfg, tmp_path / "run")
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("stage") in ("warmup", "adapt")]
    assert {r["stage"] for r in train_rows} == {"warmup", "adapt"}
    values = [r["feature_distance"] for r in train_rows]
    assert all(v is not None and v >= 0 for v in values) and any(v > 0 for v in values), values
    check_resume_exact(cfg, tmp_path / "resume")  # the reference is rebuilt from the file, not checkpointed
