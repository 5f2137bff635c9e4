"""Fixtures of the export tests: a small synthetic benchmark, a checkpoint trained on it, and its fp32 ONNX.

The checkpoint is a compact model trained for a few steps on the synthetic *source* domain (CPU, one thread,
a few seconds), so its class maps are confident enough for the precision goals to mean something; set
UDASEG_EXPORT_CHECKPOINT to a real checkpoint of the embedded benchmark (e.g. runs/<run>/final.pt) to run the same
tests on it. Shapes stay small (64x128) so the folder runs in about a minute on two cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from export_testdata import COUNTS, SIZE, train_compact


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


@pytest.fixture(scope="session")
def checkpoint(synthetic_root, tmp_path_factory) -> Path:
    """UDASEG_EXPORT_CHECKPOINT if set, else a compact model trained for a few steps here."""
    given = os.environ.get("UDASEG_EXPORT_CHECKPOINT")
    if given:
        return Path(given)
    return train_compact(synthetic_root, tmp_path_factory.mktemp("ckpt") / "compact.pt")


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
    assert main([*args, "--dynamic", "--labels-dtype", "uint8", "--input-dtype", "uint8"]) == 0
    return out
