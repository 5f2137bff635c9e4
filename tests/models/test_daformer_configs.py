"""The shipped DAFormer-schedule configs load, name a registered model and methods, and carry DAFormer's schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import udaseg
from udaseg.config import load_config
from udaseg.models import build_model
from udaseg.train import build_stages

CONFIGS = Path(udaseg.__file__).parent / "configs"
METHODS = ["self_training", "mic", "dida", "cpsl", "hiast", "tdi", "diga"]
FILES = [f"{task}_{m}_daformer.yaml" for task in ("gta2cs", "synthia2cs") for m in METHODS]


def test_every_daformer_config_is_shipped():
    assert sorted(p.name for p in CONFIGS.glob("*_daformer.yaml")) == sorted(FILES)


@pytest.mark.parametrize("name", FILES)
def test_daformer_schedule(name):
    cfg = load_config(CONFIGS / name)
    o, t, d = cfg.optim, cfg.train, cfg.data
    assert (o.optimizer, o.lr, o.head_lr_mult, o.weight_decay) == ("adamw", 6e-5, 10.0, 0.01)
    assert (o.warmup_iters, o.poly_power) == (1500, 1.0)
    assert (t.iters, t.ema, t.amp) == (40000, 0.999, True)
    assert (d.crop, d.batch_size, d.scale_range, d.target_resize) == ([512, 512], 2, [1.0, 1.0], [512, 1024])
    assert d.rcs and (d.rcs_temperature, d.rcs_min_pixels) == (0.01, 3000)
    assert d.protocol == (16 if name.startswith("synthia") else 19)
    assert d.source.startswith("synthia:" if name.startswith("synthia") else "gta5:")
    assert cfg.model.name == "daformer_mitb5" and cfg.model.pretrained.endswith("mit_b5.pth")
    fd = cfg.feature_distance
    assert (fd.weight, fd.classes, fd.min_ratio) == (0.005, [6, 7, 11, 12, 13, 14, 15, 16, 17, 18], 0.75)
    assert t.method == name.split("_", 1)[1].removesuffix("_daformer.yaml")
    if "self_training" in cfg.methods:
        st = cfg.methods["self_training"]
        assert (st["pseudo_threshold"], st["ignore_top"], st["ignore_bottom"]) == (0.968, 15, 120)


@pytest.mark.parametrize("name", FILES)
def test_model_and_methods_build(name):
    """The model (on the meta device: no memory) and the training stages with the file's method options."""
    cfg = load_config(CONFIGS / name)
    with torch.device("meta"):
        model = build_model(cfg.model.name, num_classes=19, **cfg.model.kwargs)
    stages = build_stages(cfg, 19, model.feature_dim, "cpu")  # what udaseg.train builds, options checked
    assert len(stages) == 1 + (cfg.train.warmup_iters > 0)
    assert all(m.feature_dim == 256 for s in stages for m in s.methods)
