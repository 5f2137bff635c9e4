"""MiT models in the training loop: tiny runs of udaseg.train (32x64 crops of the synthetic benchmark)."""

from __future__ import annotations

import json
import math

from tests.helpers import check_resume_exact, tiny_config
from udaseg.checkpoint import load_model

MIT = {"model.name": "segformer_mitb0", "model.kwargs": "{}"}


def test_segformer_resume_is_exact_without_stochastic_layers(tmp_path):
    """The loop with a MiT model: stopped + resumed == uninterrupted, weights, teacher and optimizer."""
    cfg = tiny_config("self_training", **{**MIT, "model.kwargs": "{drop_path_rate: 0.0, dropout: 0.0}"})
    check_resume_exact(cfg, tmp_path, stop_after=3)


def test_segformer_resume_is_exact_with_stochastic_depth_and_dropout(tmp_path):
    check_resume_exact(tiny_config("self_training", **MIT), tmp_path, stop_after=3)


def test_daformer_with_feature_plugins(tmp_path):
    """DIDA and CPSL project the DAFormer decoder's fused features (here 32 ch at stride 4)."""
    from udaseg.train import train

    cfg = tiny_config("dida+cpsl", **{"model.name": "daformer_mitb0", "model.kwargs": "{channels: 32}"})
    train(cfg, tmp_path)
    result = json.loads((tmp_path / "final.json").read_text())
    assert result["iterations"] == 5 and math.isfinite(result["miou"])
    model, _ = load_model(tmp_path / "final.pt")
    assert model.__class__.__name__ == "MiTSegmenter" and model.feature_dim == 32
