"""export/to_trt.py without TensorRT: the clear failure, and everything before (and, faked, around) the builder."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from fake_tensorrt import make_fake_tensorrt

from udaseg.export import to_trt
from udaseg.export.onnx_utils import ExportError
from udaseg.export.profiles import Profile, check_in_profile, parse_shape, resolve_profile
from udaseg.export.to_trt import BuildError, TensorRTUnavailable, check_engine_precision, plan_precision

HALF_LAYERS = '{"Layers": [{"Name": "conv", "Outputs": [{"Format/Datatype": "Channel major FP16 format (kHWC8)"}]}]}'
INT8_LAYERS = '{"Layers": [{"Name": "conv", "Inputs": [{"Format": "kCHW32", "DataType": "Int8"}]}]}'
FP32_LAYERS = '{"Layers": [{"Name": "conv", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]}]}'


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # "import tensorrt" raises ImportError, installed or not


def test_missing_tensorrt_is_a_clear_error(fp32_onnx, tmp_path, no_tensorrt, caplog, capsys):
    caplog.set_level(logging.INFO, logger="udaseg")
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT is not installed.*pip install 'udaseg\[trt\]'"):
        to_trt.build_engine(fp32_onnx, tmp_path / "m.engine")
    code = to_trt.main(["--onnx", str(fp32_onnx), "--engine", str(tmp_path / "m.engine")])
    assert code == 2 and "error: TensorRT is not installed" in capsys.readouterr().err  # one line, no traceback
    assert "input input   float32  [1, 3, 64, 128]" in caplog.text  # I/O logged before TensorRT is needed
    assert "TensorRT 10 ONNX parser" in caplog.text and "TensorRT 11 ONNX parser" in caplog.text  # and the report
    assert not (tmp_path / "m.engine").exists() and not list(tmp_path.glob("*.onnx"))


def test_type_stubs_alone_are_not_tensorrt(monkeypatch):
    """tensorrt-stubs installs a 'tensorrt' folder of .pyi files: importable (namespace package), not TensorRT."""
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # no __version__, like the stubs
    with pytest.raises(TensorRTUnavailable, match="only the 'tensorrt' type stubs are installed"):
        to_trt.import_tensorrt()


def _real_tensorrt() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return getattr(tensorrt, "__version__", None) is not None


def test_script_without_tensorrt_exits_2(fp32_onnx, tmp_path):
    import subprocess
    from pathlib import Path

    if _real_tensorrt():  # pragma: no cover - TensorRT hosts
        pytest.skip("TensorRT is installed here")
    script = Path(__file__).resolve().parents[2] / "export" / "to_trt.py"
    done = subprocess.run(
        [sys.executable, str(script), "--onnx", str(fp32_onnx), "--engine", str(tmp_path / "e")],
        capture_output=True,
        text=True,
    )
    # without TensorRT, or with only the tensorrt-stubs package that the dev setup installs for mypy
    assert done.returncode == 2, done.stderr[-2000:]
    assert "TensorRT is not installed" in done.stderr or "type stubs are installed, not TensorRT" in done.stderr


@pytest.mark.parametrize(
    "asked, graph, major, strongly_typed, flags, convert",
    [
        (None, "fp16", 10, True, [], False),  # precision from the graph
        (None, "fp32", 10, False, ["FP16"], False),  # no precision asked: fp16, the car's default
        (None, "fp32", 11, True, [], True),
        ("fp16", "fp16", 11, True, [], False),
        ("int8", "int8", 10, True, [], False),
        ("int8", "int8", 11, True, [], False),
        ("fp16", "fp32", 10, False, ["FP16"], False),  # weak typing, still allowed on 10
        ("fp16", "fp32", 11, True, [], True),  # 11: no FP16 flag -> convert the graph, never a silent fp32 build
        ("fp32", "fp32", 11, True, [], False),
    ],
)
def test_precision_plan(asked, graph, major, strongly_typed, flags, convert):
    plan = plan_precision(asked, graph, major)
    assert (plan.strongly_typed, plan.builder_flags, plan.convert_to_fp16) == (strongly_typed, flags, convert)
    assert plan.precision == (asked or ("fp16" if graph == "fp32" else graph))


@pytest.mark.parametrize(
    "asked, graph, message",
    [
        ("int8", "fp32", "needs a Q/DQ ONNX"),
        ("int8", "fp16", "needs a Q/DQ ONNX"),
        ("fp32", "fp16", "--precision fp32"),
        ("fp16", "int8", "--precision fp16"),
    ],
)
@pytest.mark.parametrize("major", [10, 11])
def test_precision_plan_refusals(asked, graph, message, major):
    with pytest.raises(ExportError, match=message):
        plan_precision(asked, graph, major)


def test_unsupported_tensorrt_version():
    with pytest.raises(TensorRTUnavailable, match="TensorRT 8.x is not supported"):
        plan_precision("fp16", "fp16", 8)


def test_engine_precision_check():
    check_engine_precision(HALF_LAYERS, "fp16")
    check_engine_precision(INT8_LAYERS, "int8")  # TensorRT 11 inspector: separate DataType field
    check_engine_precision(FP32_LAYERS, "fp32")
    with pytest.raises(BuildError, match="fell back to fp32"):
        check_engine_precision(FP32_LAYERS, "fp16")
    with pytest.raises(BuildError, match="no int8 layer"):
        check_engine_precision(HALF_LAYERS, "int8")


def test_shape_parsing_and_profiles():
    assert parse_shape("1x3x512x1024") == (None, (1, 3, 512, 1024))
    assert parse_shape("input:1,3,64,128") == ("input", (1, 3, 64, 128))
    with pytest.raises(ExportError, match="cannot parse shape"):
        parse_shape("1x3xHx4")
    dyn = ["batch", 3, "height", "width"]
    with pytest.raises(ExportError, match=r"dynamic dims 0 \(batch\), 2 \(height\), 3 \(width\): give --opt"):
        resolve_profile("input", dyn)
    p = resolve_profile("input", dyn, "1x3x256x512", "1x3x512x1024", "2x3x1024x2048")
    assert (p.min, p.opt, p.max) == ((1, 3, 256, 512), (1, 3, 512, 1024), (2, 3, 1024, 2048))
    assert resolve_profile("input", [1, 3, 64, 128]).is_static
    with pytest.raises(ExportError, match="dim 2 is static 64"):
        resolve_profile("input", [1, 3, 64, 128], opt_s="1x3x128x128")
    with pytest.raises(ExportError, match="min <= opt <= max"):
        resolve_profile("input", dyn, "1x3x512x512", "1x3x256x512", "1x3x1024x1024")
    with pytest.raises(ExportError, match="the ONNX input is 'input'"):
        resolve_profile("input", dyn, opt_s="image:1x3x64x64")
    with pytest.raises(ExportError, match="has rank 3"):
        resolve_profile("input", dyn, opt_s="3x64x64")


def test_shapes_outside_the_profile():
    p = Profile("input", (1, 3, 256, 512), (1, 3, 512, 1024), (1, 3, 1024, 2048))
    check_in_profile((1, 3, 300, 2048), p)
    with pytest.raises(ExportError, match=r"dim 2 = 2048 not in \[256, 1024\].*--min/--max"):
        check_in_profile((1, 3, 2048, 1024), p)
    with pytest.raises(ExportError, match="takes rank 4"):
        check_in_profile((3, 512, 1024), p)


def test_dynamic_onnx_needs_shapes_before_tensorrt(dynamic_onnx, tmp_path, no_tensorrt):
    """The profile error comes before the TensorRT import: a user learns about both without a GPU."""
    with pytest.raises(ExportError, match=r"dynamic dims 0 \(batch\), 2 \(height\), 3 \(width\)"):
        to_trt.build_engine(dynamic_onnx, tmp_path / "d.engine")
    with pytest.raises(TensorRTUnavailable, match="not installed"):  # with shapes, on to the TensorRT import
        to_trt.build_engine(dynamic_onnx, tmp_path / "d.engine", opt_shape="1x3x512x1024")


BUILDS = [("10.13.0", "fp16", None), ("11.4.0", "fp16", None), ("10.13.0", "fp32", "fp16"), ("11.4.0", "int8", "int8")]


@pytest.mark.parametrize("version, graph_key, asked", BUILDS)
def test_builder_calls_with_fake_tensorrt(version, graph_key, asked, precision_onnx, tmp_path, monkeypatch):
    layers = INT8_LAYERS if graph_key == "int8" else HALF_LAYERS
    fake = make_fake_tensorrt(version, layer_info=layers)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    engine = tmp_path / "model.engine"
    cache = tmp_path / "timing.cache"
    meta = to_trt.build_engine(precision_onnx[graph_key], engine, asked, workspace_mb=256, timing_cache=cache)
    calls = dict(fake.calls)
    major = int(version.split(".")[0])
    weak = asked == "fp16" and graph_key == "fp32"
    assert calls["create_network"] == (1 << 1 if major == 10 and not weak else 0)  # STRONGLY_TYPED on 10 only
    assert ("set_flag", 0) in fake.calls if weak else "set_flag" not in calls  # FP16 flag only for 10 + fp32 graph
    assert calls["workspace"] == 256 << 20 and calls["build"] == 2  # DETAILED layer info for the precision check
    assert engine.read_bytes() == b"serialized-engine" and cache.read_bytes() == b"timing-cache"
    written = json.loads((tmp_path / "model.engine.json").read_text())
    assert written == json.loads(json.dumps(meta))
    assert written["tensorrt"] == version and written["precision"] == (asked or graph_key)
    assert written["io"][0] == {"name": "input", "kind": "input", "dtype": "float32", "shape": [1, 3, 64, 128]}
    assert written["runtime"]["input"]["name"] == "input" and written["runtime"]["precision"] == (asked or graph_key)
    assert written["udaseg"]["model"] == "compact" and written["profile"]["opt"] == [1, 3, 64, 128]


def test_fake_tensorrt_11_converts_fp32_graph_for_fp16(precision_onnx, tmp_path, monkeypatch):
    fake = make_fake_tensorrt("11.4.0", layer_info=HALF_LAYERS)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    meta = to_trt.build_engine(precision_onnx["fp32"], tmp_path / "m.engine", "fp16")
    parsed = dict(fake.calls)["parse_from_file"]
    assert parsed.endswith("m.fp16.onnx") and meta["build_plan"]["convert_to_fp16"]
    from udaseg.export.onnx_utils import graph_precision, load_onnx

    assert graph_precision(load_onnx(parsed)) == "fp16"


def test_fake_tensorrt_fp32_fallback_and_parser_errors(precision_onnx, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.13.0", layer_info=FP32_LAYERS))
    with pytest.raises(BuildError, match="fell back to fp32"):
        to_trt.build_engine(precision_onnx["fp16"], tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("11.4.0", parse_errors=2))
    with pytest.raises(BuildError, match=r"could not parse .*\(2 errors"):
        to_trt.build_engine(precision_onnx["fp32"], tmp_path / "m.engine", "fp32")
    errors = [r.getMessage() for r in caplog.records if "parser error" in r.getMessage()]
    assert errors == [
        "ONNX parser error 1/2: node 10 (Resize 'node_resize_0'): unsupported mode 0",
        "ONNX parser error 2/2: node 11 (Resize 'node_resize_1'): unsupported mode 1",
    ]


def test_ort_provider_path(fp32_onnx, precision_onnx, tmp_path):
    from udaseg.export.ort_providers import ProviderUnavailable, make_session, provider_options

    p = Profile("input", (1, 3, 256, 512), (1, 3, 512, 1024), (1, 3, 1024, 2048))
    name, opts = provider_options("tensorrt", "fp32", "fp16", tmp_path, p, 1024)[0]
    assert name == "TensorrtExecutionProvider" and opts["trt_fp16_enable"] and opts["trt_engine_cache_enable"]
    assert opts["trt_profile_opt_shapes"] == "input:1x3x512x1024" and opts["trt_max_workspace_size"] == 1 << 30
    assert provider_options("tensorrt", "int8")[0][1]["trt_int8_enable"]
    assert provider_options("cuda", "fp16")[0][0] == "CUDAExecutionProvider"
    with pytest.raises(ExportError, match="export/to_onnx.py --precision int8"):
        provider_options("tensorrt", "fp32", "int8")
    with pytest.raises(ProviderUnavailable, match="has no TensorrtExecutionProvider.*onnxruntime-gpu"):
        make_session(precision_onnx["fp16"], "tensorrt", tmp_path / "cache")
    assert to_trt.main(["--onnx", str(fp32_onnx), "--engine", str(tmp_path / "c"), "--ort-provider", "cuda"]) == 2
