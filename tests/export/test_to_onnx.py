"""export/to_onnx.py: graph I/O in every mode, dynamic shapes, fp16/int8 conversion, and clear errors."""

# ruff: noqa: E402 - the project imports come after the skip when onnx (the export extra) is missing

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_testdata import SIZE

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'udaseg[export]')")

from udaseg.export import prepost
from udaseg.export.onnx_utils import (
    ExportError,
    describe_io,
    get_metadata,
    graph_precision,
    load_onnx,
    ort_session,
)
from udaseg.export.to_onnx import ExportConfig, export_onnx, load_checkpoint_model


def _image(h: int = SIZE[0], w: int = SIZE[1], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _torch_logits(checkpoint, x: np.ndarray) -> np.ndarray:
    from udaseg.models import upsample

    model, _ = load_checkpoint_model(checkpoint)
    with torch.no_grad():
        t = torch.from_numpy(x)
        return upsample(model(t)["logits"], t.shape[-2:]).numpy()


def test_fp32_graph_io_metadata_and_values(fp32_onnx, checkpoint):
    model = load_onnx(fp32_onnx)  # includes onnx.checker full_check
    io = {t["name"]: t for t in describe_io(model)}
    assert io["input"] == {"name": "input", "kind": "input", "dtype": "float32", "shape": [1, 3, *SIZE]}
    assert io["labels"]["dtype"] == "int32" and io["labels"]["shape"] == [1, *SIZE]
    assert io["logits"]["dtype"] == "float32" and io["logits"]["shape"] == [1, 19, *SIZE]
    assert model.opset_import[0].version >= 18
    meta = get_metadata(model)
    assert meta["model"] == "compact" and meta["num_classes"] == 19 and meta["precision"] == "fp32"
    assert graph_precision(model) == "fp32"

    x = prepost.preprocess(_image(), *SIZE)[None]
    labels, logits = ort_session(fp32_onnx, threads=1).run(["labels", "logits"], {"input": x})
    ref = _torch_logits(checkpoint, x)
    assert np.abs(logits - ref).max() < 1e-4
    assert (labels == ref.argmax(1)).mean() >= 0.999


def test_precision_graphs(precision_onnx):
    fp16, int8 = load_onnx(precision_onnx["fp16"]), load_onnx(precision_onnx["int8"])
    assert graph_precision(fp16) == "fp16" and graph_precision(int8) == "int8"
    for model in (fp16, int8):  # float32 I/O kept, metadata carried over
        io = {t["name"]: t["dtype"] for t in describe_io(model)}
        assert io == {"input": "float32", "labels": "int32", "logits": "float32"}
    assert get_metadata(int8)["precision"] == "int8" and get_metadata(int8)["export"]["calib"].startswith("synthetic")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in int8.graph.initializer}
    dq = [n for n in int8.graph.node if n.op_type == "DequantizeLinear"]
    weights = [n for n in dq if n.input[0] in inits]  # constant input: a quantized weight
    convs = [n for n in int8.graph.node if n.op_type == "Conv"]
    assert len(weights) == len(convs) and all(inits[n.input[0]].dtype == np.int8 for n in weights)  # no int32 bias
    assert all(inits[n.input[1]].shape == (inits[n.input[0]].shape[0],) for n in weights)  # per output channel
    zero_points = [inits[n.input[2]] for n in dq if len(n.input) > 2]
    assert zero_points and not any(z.any() for z in zero_points)  # symmetric: every zero point is 0


def test_dynamic_uint8_labels_only(dynamic_onnx, checkpoint):
    path = dynamic_onnx
    io = {t["name"]: t for t in describe_io(load_onnx(path))}
    assert io["input"]["dtype"] == "uint8" and all(isinstance(d, str) for d in np.take(io["input"]["shape"], [0, 2, 3]))
    assert list(io) == ["input", "labels"] and io["labels"]["dtype"] == "uint8"
    cast_to = [a.i for n in load_onnx(path).graph.node if n.op_type == "Cast" for a in n.attribute]
    assert cast_to[-2:] == [onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8]  # TensorRT: no int32 -> uint8 cast
    session = ort_session(path, threads=1)
    for batch, h, w in [(1, *SIZE), (2, 96, 160), (1, 45, 77)]:
        x = np.stack([prepost.preprocess_u8(_image(h, w, seed=i), h, w) for i in range(batch)])
        (labels,) = session.run(None, {"input": x})
        ref = _torch_logits(checkpoint, x.astype(np.float32) / np.float32(255)).argmax(1)
        assert labels.shape == (batch, h, w) and labels.dtype == np.uint8
        assert (labels == ref).mean() >= 0.999, (batch, h, w)


def test_config_errors():
    with pytest.raises(ExportError, match="calib"):
        ExportConfig(precision="int8").validate()
    with pytest.raises(ExportError, match="output_mode"):
        ExportConfig(output_mode="probs").validate()
    with pytest.raises(ExportError, match="at least 32"):
        ExportConfig(height=16, width=64, dynamic="all").validate()


def test_checkpoint_of_another_class_count(checkpoint, tmp_path):
    """model_spec says 19 classes but the weights have 16: the error names both sides."""
    from udaseg.checkpoint import load_checkpoint, save_checkpoint
    from udaseg.models import build_model

    payload = load_checkpoint(checkpoint)
    payload["model"] = build_model("compact", num_classes=16).state_dict()
    save_checkpoint(tmp_path / "c16.pt", payload)
    with pytest.raises(ExportError, match=r"c16\.pt.*'compact' with 19 classes.*classifier"):
        export_onnx(tmp_path / "c16.pt", tmp_path / "x.onnx", ExportConfig(height=32, width=64))
    with pytest.raises(ExportError, match="expected 16"):
        load_checkpoint_model(checkpoint, expect_classes=16)
    with pytest.raises(ExportError, match="no such checkpoint"):
        load_checkpoint_model(tmp_path / "missing.pt")


def test_corrupted_onnx(fp32_onnx, tmp_path):
    data = fp32_onnx.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ExportError, match="cut.onnx: not a readable ONNX model"):
        load_onnx(tmp_path / "cut.onnx")
    model = onnx.load(str(fp32_onnx))
    model.graph.node[3].input[0] = "no_such_tensor"
    onnx.save(model, str(tmp_path / "broken.onnx"))
    with pytest.raises(ExportError, match="broken.onnx: the ONNX graph is invalid"):
        load_onnx(tmp_path / "broken.onnx")


def test_fp16_overflow_is_refused(tmp_path):
    """A graph whose activations exceed 65504 must not become an fp16 graph that scores 0 mIoU."""
    from onnx import TensorProto, helper

    from udaseg.export.precision import convert_fp16

    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [1e6])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "scale"], ["big"]), helper.make_node("Relu", ["big"], ["logits"])],
        "overflow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])],
        [scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    feeds = [{"input": np.ones((1, 3, 4, 4), np.float32)}]
    with pytest.raises(ExportError, match=r"float16 would overflow.*big \(max \|x\| = 1e\+06\)"):
        convert_fp16(model, feeds)
    feeds = [{"input": np.full((1, 3, 4, 4), 1e-3, np.float32)}]
    assert graph_precision(convert_fp16(model, feeds)) == "fp16"


@pytest.mark.parametrize(
    "stage, how", [("to_onnx", "script"), ("to_onnx", "module"), ("verify", "script"), ("to_trt", "module")]
)
def test_scripts_run_both_ways(stage, how):
    """``python export/<stage>.py`` and ``python -m udaseg.export.<stage>`` both start (absolute imports)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "export" / f"{stage}.py"
    cmd = [sys.executable, str(script)] if how == "script" else [sys.executable, "-m", f"udaseg.export.{stage}"]
    done = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]
