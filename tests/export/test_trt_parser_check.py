"""export/trt_compat.py and export/simplify.py: the TensorRT parser report and onnxslim, on small graphs made here."""

# ruff: noqa: E402 - the project imports come after the skip when onnx (the export extra) is missing

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'udaseg[export]')")
from onnx import TensorProto, helper, numpy_helper

from udaseg.export.trt_compat import parser_report

F, I64, U8 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.UINT8


def make_model(nodes, inputs, outputs, inits=(), opset: int = 18, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def image(name: str = "input", dtype: int = F, shape=(1, 3, 8, 8)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def conv_resize_model(dynamic: bool = False, **resize_attrs):
    """input -> Conv 3->4 -> Relu -> Resize x2 (bilinear, half-pixel) -> ArgMax -> Cast int32 -> labels."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel", **resize_attrs}
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Resize", ["r", "", "scales"], ["logits"], name="resize", **attrs),
        helper.make_node("ArgMax", ["logits"], ["a"], axis=1, keepdims=0, name="argmax"),
        helper.make_node("Cast", ["a"], ["labels"], to=TensorProto.INT32, name="cast"),
    ]
    shape = ["batch", 3, "height", "width"] if dynamic else [1, 3, 8, 8]
    out_hw = ["batch", "h2", "w2"] if dynamic else [1, 16, 16]  # (B, 2H, 2W)
    outs = [
        helper.make_tensor_value_info("labels", TensorProto.INT32, out_hw),
        image("logits", F, [out_hw[0], 4, *out_hw[1:]]),
    ]
    return make_model(nodes, [image(shape=shape)], outs, [w, scales])


@pytest.mark.parametrize("major", [10, 11])
def test_clean_graph_passes(major):
    report = parser_report(conv_resize_model(), major)
    assert report.ok, report.format()
    assert any("int64 tensors" in n for n in report.notes)  # ArgMax's output: kept as int64 on TensorRT >= 10


@pytest.mark.parametrize("major", [10, 11])
def test_unsupported_and_foreign_operators(major):
    nodes = [
        helper.make_node("Unique", ["input"], ["u"], name="uniq"),
        helper.make_node("FusedConv", ["input"], ["fc"], domain="com.microsoft", name="fused"),
        helper.make_node("Relu", ["input"], ["output"], name="ok"),
    ]
    outs = [image("output"), helper.make_tensor_value_info("u", F, None), helper.make_tensor_value_info("fc", F, None)]
    model = make_model(nodes, [image()], outs, extra_opsets=[("com.microsoft", 1)])
    report = parser_report(model, major)
    assert not report.ok
    text = "\n".join(report.errors)
    assert "Unique: not supported: 'uniq'" in text
    assert "FusedConv of domain 'com.microsoft'" in text and "'fused'" in text
    assert "'ok'" not in text


def test_version_differences():
    """Swish: parsed by TensorRT 11.0+, not 10. Opset 25: beyond both tables (11.5 takes it: said in the error)."""
    swish = make_model([helper.make_node("Swish", ["input"], ["output"], name="swish")], [image()], [image("output")],
                       opset=24)  # fmt: skip
    assert not parser_report(swish, 10).ok and "Swish" in parser_report(swish, 10).errors[0]
    assert parser_report(swish, 11).ok, parser_report(swish, 11).format()
    relu = make_model([helper.make_node("Relu", ["input"], ["output"])], [image()], [image("output")], opset=25)
    expected = "opset 25 is outside the parser's range 9-24 (TensorRT 11.5 parses opset 25)"
    assert expected in parser_report(relu, 11).errors
    with pytest.raises(ValueError, match="no parser table for TensorRT 8"):
        parser_report(relu, 8)


def test_types_uint8_and_casts():
    """uint8 only at the graph's edges, casts to uint8 only from float, op input types from the table."""
    nodes = [
        helper.make_node("Cast", ["input"], ["i"], to=I64, name="to_int64"),
        helper.make_node("Cast", ["i"], ["u"], to=U8, name="int64_to_uint8"),  # TensorRT: from float only
        helper.make_node("Cast", ["u"], ["f"], to=F, name="uint8_inside"),
        helper.make_node("Conv", ["i", "w"], ["c"], name="conv_on_int64"),
        helper.make_node("Cast", ["f"], ["labels"], to=U8, name="float_to_uint8"),  # the to_onnx.py way: fine
    ]
    w = numpy_helper.from_array(np.zeros((2, 3, 1, 1), np.int64), "w")
    outs = [helper.make_tensor_value_info("labels", U8, None), helper.make_tensor_value_info("c", I64, None)]
    report = parser_report(make_model(nodes, [image()], outs, [w]), 10)
    text = "\n".join(report.errors)
    assert "Cast int64 -> uint8" in text and "'int64_to_uint8'" in text and "'float_to_uint8'" not in text
    assert "uint8 tensor inside the graph" in text and "'u'" in text
    assert "Conv on int64" in text and "'conv_on_int64'" in text
    assert any("int64 graph output" in n and "'c'" in n for n in report.notes)


def test_resize_quantization_and_float64():
    cubic = parser_report(conv_resize_model(mode="cubic"), 11)
    assert any("Resize mode 'cubic'" in e for e in cubic.errors)
    assert any("antialias" in e for e in parser_report(conv_resize_model(antialias=1), 10).errors)
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(3, np.int8), "zero")
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"], name="dq"),
        helper.make_node("Cast", ["dq"], ["d"], to=TensorProto.DOUBLE, name="to_double"),
        helper.make_node("Cast", ["d"], ["output"], to=F, name="back"),
    ]
    report = parser_report(make_model(nodes, [image()], [image("output")], [scale, zero]), 10)
    assert sum("non-zero (or non-constant) zero point" in e for e in report.errors) == 2  # Q and DQ groups
    assert report.narrowed_tensors == ["d"] and any("float64 narrowed" in n for n in report.notes)
    symmetric = numpy_helper.from_array(np.array(0, np.int8), "zero")
    assert parser_report(make_model(nodes[:2], [image()], [image("dq")], [scale, symmetric]), 10).ok


def test_dynamic_dims_need_a_profile():
    model = conv_resize_model(dynamic=True)
    report = parser_report(model, 10)
    assert report.dynamic_inputs == ["input (dims [0, 2, 3])"]
    assert any("without an optimisation profile" in e and "--opt" in e for e in report.errors)
    assert parser_report(model, 10, has_profile=True).ok


def test_check_cli(tmp_path, capsys):
    from udaseg.export.to_trt import main

    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(conv_resize_model(), str(good))
    onnx.save(conv_resize_model(mode="cubic"), str(bad))
    assert main(["--onnx", str(good), "--check"]) == 0
    out = capsys.readouterr().out
    assert "TensorRT 10 ONNX parser" in out and "TensorRT 11 ONNX parser" in out and "no blocking problem" in out
    assert main(["--onnx", str(bad), "--check", "--trt-version", "11"]) == 1
    out = capsys.readouterr().out
    assert "TensorRT 11 ONNX parser" in out and "Resize mode 'cubic'" in out and "TensorRT 10 ONNX parser" not in out
    dyn = tmp_path / "dynamic.onnx"
    onnx.save(conv_resize_model(dynamic=True), str(dyn))
    assert main(["--onnx", str(dyn), "--check"]) == 1  # no --opt: reported, not a crash
    assert main(["--onnx", str(dyn), "--check", "--opt", "1x3x16x16"]) == 0
    assert main(["--onnx", str(tmp_path / "missing.onnx"), "--check"]) == 2
    assert "error: " in capsys.readouterr().err


# ----------------------------------------------------------------------------- simplification
def foldable_model():
    """input + (a + b) through Identity chains: onnxslim folds the constant add and drops the Identities."""
    a = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.25, np.float32), "a")
    b = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "b")
    nodes = [
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("Identity", ["input"], ["x1"]),
        helper.make_node("Identity", ["x1"], ["x2"]),
        helper.make_node("Add", ["x2", "ab"], ["s"]),
        helper.make_node("Relu", ["s"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["idx"], axis=1, keepdims=0),
        helper.make_node("Cast", ["idx"], ["labels"], to=TensorProto.INT32),
    ]
    outs = [image("logits"), helper.make_tensor_value_info("labels", TensorProto.INT32, [1, 8, 8])]
    model = make_model(nodes, [image()], outs, [a, b])
    entry = model.metadata_props.add()
    entry.key, entry.value = "udaseg", '{"model": "toy"}'
    return model


def test_simplified_graph_matches_onnx_runtime():
    pytest.importorskip("onnxslim", reason="onnxslim is not installed (pip install 'udaseg[export]')")
    from udaseg.export.simplify import compare_outputs, sample_feeds, simplify_onnx

    model = foldable_model()
    feeds = sample_feeds(model, (1, 3, 8, 8))
    slim, info = simplify_onnx(model, feeds)
    assert info["applied"] and info["nodes_after"] < info["nodes_before"] == 7, info
    assert {n.op_type for n in slim.graph.node}.isdisjoint({"Identity"})
    assert [(p.key, p.value) for p in slim.metadata_props] == [("udaseg", '{"model": "toy"}')]
    assert info["agreement"]["labels"] == 1.0 and info["agreement"]["logits"] <= 1e-6
    onnx.checker.check_model(slim, full_check=True)
    assert compare_outputs(model, slim, sample_feeds(model, (1, 3, 8, 8), seed=5))  # fresh inputs agree too


def test_simplification_that_changes_results_is_refused(monkeypatch):
    pytest.importorskip("onnxslim", reason="onnxslim is not installed (pip install 'udaseg[export]')")
    import onnxslim

    from udaseg.export.simplify import sample_feeds, simplify_onnx

    model = foldable_model()
    wrong = foldable_model()
    wrong.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full((1, 3, 1, 1), 9.0, np.float32), "a"))
    del wrong.graph.node[1:3]  # fewer nodes, as a simplification would have
    wrong.graph.node[1].input[0] = "input"
    monkeypatch.setattr(onnxslim, "slim", lambda m, *a, **k: wrong)
    kept, info = simplify_onnx(model, sample_feeds(model, (1, 3, 8, 8)))
    assert kept is model and not info["applied"] and "results differ on ONNX Runtime" in info["reason"]


def test_build_stops_on_parser_errors_of_the_installed_version(tmp_path, monkeypatch):
    """With TensorRT 10 installed (faked), a cubic Resize stops the build before the builder; the flag overrides."""
    import sys

    from fake_tensorrt import make_fake_tensorrt

    from udaseg.export import to_trt

    half = '{"Layers": [{"Name": "conv", "Outputs": [{"Format/Datatype": "Half"}]}]}'
    fake = make_fake_tensorrt("10.13.0", layer_info=half)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    path = tmp_path / "cubic.onnx"
    onnx.save(conv_resize_model(mode="cubic"), str(path))
    with pytest.raises(to_trt.BuildError, match=r"TensorRT 10 will not take .*Resize mode 'cubic'.*--skip-parser"):
        to_trt.build_engine(path, tmp_path / "m.engine")
    assert not fake.calls and not (tmp_path / "m.engine").exists()  # the builder was never reached
    meta = to_trt.build_engine(path, tmp_path / "m.engine", parser_check_strict=False)
    assert (tmp_path / "m.engine").read_bytes() == b"serialized-engine" and meta["precision"] == "fp16"
