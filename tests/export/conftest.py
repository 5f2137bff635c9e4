"""Fixtures of the export tests: a small synthetic benchmark, a checkpoint trained on it, and its fp32 ONNX.

The checkpoint is a compact model trained for a few steps on the synthetic *source* domain (CPU, one thread,
a few seconds), so its class maps are confident enough for the precision goals to mean something; set
UDASEG_EXPORT_CHECKPOINT to a real checkpoint of the embedded benchmark (e.g. runs/<run>/final.pt) to run the same
tests on it. Shapes stay small (64x128) so the folder runs in about a minute on two cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

SIZE = (64, 128)  # (H, W) of images and graphs in these tests
COUNTS = {"val": 6, "train": 8}  # synthetic target images for scoring / calibration
TRAIN_STEPS = 60


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Two shared cores: one intra-op thread per process is faster than two fighting ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> str:
    """A synthetic-benchmark cache of our own (small counts and size), generated once per session."""
    from udaseg.data import build_dataset

    root = str(tmp_path_factory.mktemp("synthetic"))
    for split, count in COUNTS.items():
        build_dataset(f"synthetic:{root}", split=split, role="target", count=count, size=SIZE, workers=1)
    return root


@pytest.fixture(scope="session")
def dataset_spec(synthetic_root) -> tuple[str, dict]:
    """(spec, build_dataset options) of the synthetic target domain."""
    return f"synthetic:{synthetic_root}", {"count": COUNTS["val"], "size": SIZE, "workers": 1}


def _train_compact(root: str, path: Path) -> Path:
    """A compact model trained TRAIN_STEPS steps on 16 synthetic source images (supervised, cross-entropy)."""
    import torch.nn.functional as F

    from udaseg.checkpoint import save_checkpoint
    from udaseg.data import build_dataset
    from udaseg.models import build_model, upsample

    torch.manual_seed(0)
    src = build_dataset(f"synthetic:{root}", split="train", role="source", count=16, size=SIZE, workers=1)
    pairs = [src.load(i) for i in range(len(src))]
    x = torch.from_numpy(np.stack([im for im, _ in pairs])).permute(0, 3, 1, 2).float() / 255  # (16, 3, H, W)
    y = torch.from_numpy(np.stack([lb for _, lb in pairs]).astype(np.int64))  # (16, H, W)
    model = build_model("compact", num_classes=19)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(TRAIN_STEPS):
        idx = torch.randint(0, len(x), (4,), generator=gen)
        loss = F.cross_entropy(upsample(model(x[idx])["logits"], SIZE), y[idx], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    spec = {"name": "compact", "num_classes": 19, "kwargs": {}}
    save_checkpoint(path, {"model": model.state_dict(), "model_spec": spec, "iteration": TRAIN_STEPS})
    return path


@pytest.fixture(scope="session")
def checkpoint(synthetic_root, tmp_path_factory) -> Path:
    """UDASEG_EXPORT_CHECKPOINT if set, else a compact model trained for a few steps here."""
    given = os.environ.get("UDASEG_EXPORT_CHECKPOINT")
    if given:
        return Path(given)
    return _train_compact(synthetic_root, tmp_path_factory.mktemp("ckpt") / "compact.pt")


@pytest.fixture(scope="session")
def fp32_onnx(checkpoint, tmp_path_factory) -> Path:
    """Static 64x128 fp32 graph with both outputs (labels int32 + logits)."""
    from udaseg.export.to_onnx import ExportConfig, export_onnx

    cfg = ExportConfig(height=SIZE[0], width=SIZE[1], output_mode="both")
    return export_onnx(checkpoint, tmp_path_factory.mktemp("onnx") / "model_fp32.onnx", cfg)


@pytest.fixture(scope="session")
def precision_onnx(fp32_onnx, synthetic_root) -> dict[str, Path]:
    """The fp32 graph and its fp16 and int8 (calibrated on the synthetic target train split) conversions."""
    from udaseg.export.to_onnx import ExportConfig, convert_onnx

    cfg = ExportConfig(
        height=SIZE[0],
        width=SIZE[1],
        output_mode="both",
        calib=f"synthetic:{synthetic_root}",
        calib_images=COUNTS["train"],
        calib_options={"count": COUNTS["train"], "size": SIZE},
    )
    out = {"fp32": fp32_onnx}
    for precision in ("fp16", "int8"):
        out[precision] = convert_onnx(fp32_onnx, fp32_onnx.with_name(f"model_{precision}.onnx"), precision, cfg)
    return out


@pytest.fixture(scope="session")
def dynamic_onnx(checkpoint, tmp_path_factory) -> Path:
    """Through the CLI's main(): dynamic batch/height/width, uint8 input, uint8 class map only."""
    from udaseg.export.to_onnx import main

    out = tmp_path_factory.mktemp("onnx-dynamic") / "dynamic.onnx"
    args = ["--checkpoint", str(checkpoint), "--output", str(out), "--height", str(SIZE[0]), "--width", str(SIZE[1])]
    return main([*args, "--dynamic", "--labels-dtype", "uint8", "--input-dtype", "uint8"])
