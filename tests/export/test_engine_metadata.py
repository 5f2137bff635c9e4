"""Engine metadata a C++ program runs on, and the runner's tensor-type table, read back through the C++ bindings.

export/profiles.py runtime_spec writes the ``runtime`` block (ONNX metadata and ``<engine>.json``);
export/runtime/src/engine_meta.cpp reads it; udaseg._runtime exposes that reader and the TensorType size table,
so these tests check C++ against Python without TensorRT or a GPU (the engine build uses the fake tensorrt).
"""

from __future__ import annotations

import json
import sys

import pytest
from fake_tensorrt import make_fake_tensorrt

from udaseg.data.labels import CLASS_NAMES, PALETTE, PROTOCOLS
from udaseg.export.onnx_utils import get_metadata, load_onnx
from udaseg.export.profiles import class_info, runtime_spec

HALF_LAYERS = '{"Layers": [{"Name": "conv", "Outputs": [{"Format/Datatype": "Channel major FP16 format"}]}]}'
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

# nvinfer1::DataType value -> (bits per element, name); the same names as to_trt.TRT_DTYPES.
TYPES = {
    0: (32, "float32"),
    1: (16, "float16"),
    2: (8, "int8"),
    3: (32, "int32"),
    4: (8, "bool"),
    5: (8, "uint8"),
    6: (8, "float8_e4m3"),
    7: (16, "bfloat16"),
    8: (64, "int64"),
    9: (4, "int4"),
    10: (4, "float4_e2m1"),
    11: (8, "float8_e8m0"),
}
TRT_MEMBERS = ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4", "FP4", "E8M0"]


@pytest.fixture(scope="module")
def rt():
    try:
        import udaseg._runtime as module
    except ImportError:
        pytest.skip("udaseg._runtime is not built (pip install -e . or python setup.py build_ext --inplace)")
    if not hasattr(module, "tensor_type_bits"):
        pytest.skip("udaseg._runtime predates the metadata reader: rebuild it (python setup.py build_ext --inplace)")
    return module


def test_tensor_type_sizes(rt):
    from udaseg.export.to_trt import TRT_DTYPES

    for code, (bits, name) in TYPES.items():
        assert (rt.tensor_type_bits(code), rt.tensor_type_name(code)) == (bits, name), code
        assert TRT_DTYPES[TRT_MEMBERS[code]] == name  # Python engine I/O names = C++ names
        for count in (1, 2, 7, 512 * 1024):
            assert rt.tensor_bytes(code, count) == (count * bits + 7) // 8
    assert rt.tensor_bytes(9, 5) == 3 and rt.tensor_bytes(10, 1) == 1  # packed 4-bit: a last half-filled byte
    for code in (12, -1, 255):
        with pytest.raises(ValueError, match=f"unsupported tensor data type {code}"):
            rt.tensor_type_bits(code)
    with pytest.raises(OverflowError, match="too large"):
        rt.tensor_bytes(8, 2**62)


def test_engine_json_read_by_cpp(rt, fp32_onnx, tmp_path, monkeypatch):
    """<engine>.json written by to_trt.build_engine (fake TensorRT 10) holds all the C++ runner needs."""
    from udaseg.export import to_trt

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.13.0", layer_info=HALF_LAYERS))
    engine = tmp_path / "model.engine"
    to_trt.build_engine(fp32_onnx, engine)
    m = rt.read_engine_metadata(str(engine) + ".json")
    assert (m["schema"], m["input_name"], m["input_layout"], m["input_dtype"]) == (1, "input", "NCHW", "float32")
    assert m["input_shape"] == [1, 3, 64, 128] and m["profile_opt"] == [1, 3, 64, 128] == m["profile_max"]
    assert (m["host_mean"], m["host_std"]) == ([0.0] * 3, [1.0] * 3)  # [0, 1] input: only the /255 on the host
    assert m["graph_normalizes"] and m["graph_mean"] == pytest.approx(IMAGENET[0], abs=1e-6)
    assert m["graph_std"] == pytest.approx(IMAGENET[1], abs=1e-6)
    assert m["output_names"] == ["labels", "logits"]
    assert (m["labels_output"], m["logits_output"]) == ("labels", "logits")
    assert m["labels_dtype"] == "int32" and m["num_classes"] == 19 and m["class_names"] == list(CLASS_NAMES)
    assert m["palette"] == [c for rgb in PALETTE for c in rgb] and m["ignore_index"] == 255
    assert (m["protocol"], m["protocol_classes"]) == (19, list(PROTOCOLS[19])) and m["precision"] == "fp16"


def test_onnx_runtime_block_read_by_cpp(rt, dynamic_onnx):
    """The same block in the ONNX metadata: dynamic dims are -1, uint8 input, uint8 class map."""
    meta = get_metadata(load_onnx(dynamic_onnx))
    m = rt.parse_engine_metadata(json.dumps(meta["runtime"]))
    assert m["input_dtype"] == "uint8" and m["input_shape"] == [-1, 3, -1, -1]
    assert m["output_names"] == ["labels"] and m["labels_dtype"] == "uint8" and m["logits_output"] == ""
    assert m["profile_opt"] == [] and m["precision"] == "fp32"


def test_bad_metadata_is_named(rt, tmp_path):
    good = runtime_spec(
        [
            {"name": "image", "kind": "input", "dtype": "float32", "shape": [1, 3, 8, 8]},
            {"name": "logits", "kind": "output", "dtype": "float32", "shape": [1, 2, 8, 8]},
        ],
        {"num_classes": 2, "class_names": ["road", "car"], "palette": [[1, 2, 3], [4, 5, 6]]},
    )
    m = rt.parse_engine_metadata(json.dumps({"runtime": good}))
    assert (m["input_name"], m["class_names"], m["palette"]) == ("image", ["road", "car"], [1, 2, 3, 4, 5, 6])
    assert m["labels_output"] == "" and m["logits_output"] == "logits"
    with pytest.raises(RuntimeError, match="'outputs' has neither a labels nor a logits output"):
        rt.parse_engine_metadata(json.dumps({"runtime": {**good, "outputs": []}}))
    cases = [
        ({**good, "schema": 2}, "'schema' is 2"),
        ({**good, "input": {**good["input"], "layout": "NHWC"}}, "'input.layout' is 'NHWC'"),
        ({**good, "palette": [[1, 2, 300], [0, 0, 0]]}, r"'palette' values must lie in \[0, 255\]"),
        ({**good, "class_names": ["road"]}, "'class_names' has 1 names for 2 classes"),
    ]
    for spec, message in cases:
        with pytest.raises(RuntimeError, match=message):
            rt.parse_engine_metadata(json.dumps({"runtime": spec}))
    path = tmp_path / "m.engine.json"
    path.write_text('{"runtime": {"schema": 1, "input": {"name": "x",}}}')
    with pytest.raises(RuntimeError, match="m.engine.json: expected a member name at line 1, column 49"):
        rt.read_engine_metadata(str(path))
    with pytest.raises(RuntimeError, match="cannot open engine metadata"):
        rt.read_engine_metadata(str(tmp_path / "missing.json"))
    path.write_text(json.dumps({"runtime": {**good, "class_names": ["r\u00f6ad \U0001f697", "car"]}}))  # \\u escapes
    assert rt.read_engine_metadata(str(path))["class_names"][0] == "r\u00f6ad \U0001f697"


def test_class_info_protocols():
    info = class_info(19, {"protocol": 16})
    assert info["protocol"] == {"classes": 16, "class_ids": list(PROTOCOLS[16])}
    other = class_info(3, {})
    assert other["class_names"] == ["class_0", "class_1", "class_2"]
    assert other["palette"] == [list(c) for c in PALETTE[:3]]
    from udaseg.export.onnx_utils import ExportError

    with pytest.raises(ExportError, match="2 classes and 3 colours for 3 classes"):
        class_info(3, {"class_names": ["a", "b"]})
