"""MiT models through export/to_onnx.py: normalisation, SDPA attention, upsample and argmax in one ONNX graph that
ONNX Runtime runs like PyTorch (fp32 class maps agree on >= 99.9 % of pixels).

The models are randomly initialised mit_b0 networks with a sharpened classifier (so class maps are not decided by
float noise between near-equal logits); int8 accuracy needs a trained model and is measured by
benchmarks/bench_infer.py (docs/models.md gives the command).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from udaseg.export.onnx_utils import describe_io, get_metadata, load_onnx, ort_session
from udaseg.export.to_onnx import ExportConfig, export_onnx

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def mit_checkpoint(folder: Path, name: str, num_classes: int = 19) -> tuple[Path, torch.nn.Module]:
    from udaseg.checkpoint import save_checkpoint
    from udaseg.models import build_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes).eval()
    classifier = model.decode_head.conv_seg if name.startswith("daformer") else model.decode_head.linear_pred
    with torch.no_grad():
        classifier.weight.mul_(100.0)  # logits of a trained model's scale: margins far above float error
    spec = {"name": name, "num_classes": num_classes, "kwargs": {}}
    path = save_checkpoint(folder / f"{name}.pt", {"model": model.state_dict(), "model_spec": spec})
    return path, model


def torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    from udaseg.models import upsample

    with torch.no_grad():
        t = torch.from_numpy(x)
        return upsample(model(t)["logits"], t.shape[-2:]).numpy()


def check_parity(onnx_path: Path, model: torch.nn.Module, shapes: list[tuple[int, int, int]]) -> None:
    session = ort_session(onnx_path, threads=1)
    rng = np.random.default_rng(0)
    for batch, h, w in shapes:
        x = rng.random((batch, 3, h, w), dtype=np.float32)
        labels, logits = session.run(["labels", "logits"], {"input": x})
        ref = torch_logits(model, x)
        assert logits.shape == ref.shape == (batch, model.num_classes, h, w)
        assert np.abs(logits - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())
        agreement = (labels == ref.argmax(1)).mean()
        assert agreement >= 0.999, f"{batch}x{h}x{w}: {100 * agreement:.3f} % of pixels agree"
        assert len(np.unique(labels)) > 1  # a real class map, not one class everywhere


def test_daformer_mitb0_static_fp32_parity(tmp_path):
    """The paper's head (sep-ASPP fusion) at a static 64x128 input: labels int32 and logits, metadata."""
    checkpoint, model = mit_checkpoint(tmp_path, "daformer_mitb0")
    path = export_onnx(checkpoint, tmp_path / "daformer.onnx", ExportConfig(height=64, width=128, output_mode="both"))
    graph = load_onnx(path)
    io = {t["name"]: t for t in describe_io(graph)}
    assert io["input"]["shape"] == [1, 3, 64, 128] and io["labels"]["dtype"] == "int32"
    assert get_metadata(graph)["model"] == "daformer_mitb0"
    ops = {n.op_type for n in graph.graph.node}
    assert {"Softmax", "ArgMax", "Resize"} <= ops  # attention, class map and upsample are inside the graph
    check_parity(path, model, [(1, 64, 128)])


@pytest.mark.slow
def test_segformer_mitb0_dynamic_fp32_parity(tmp_path):
    """One graph for any batch and size (sizes not divisible by the strides included) agrees with PyTorch."""
    checkpoint, model = mit_checkpoint(tmp_path, "segformer_mitb0", num_classes=7)
    cfg = ExportConfig(height=64, width=128, output_mode="both", dynamic="all")
    path = export_onnx(checkpoint, tmp_path / "segformer.onnx", cfg)
    shape = describe_io(load_onnx(path))[0]["shape"]
    assert all(isinstance(shape[i], str) for i in (0, 2, 3)), shape
    check_parity(path, model, [(2, 64, 128), (1, 96, 160), (1, 45, 77)])
