"""ONNX helpers shared by the export stages: load with clear errors, describe inputs/outputs, udaseg metadata.

Every ONNX file written by ``to_onnx.py`` carries a JSON ``udaseg`` metadata entry (model name, class count, input
dtype and layout, output mode, precision, export size), so later stages (verify, to_trt, infer) know what the graph
expects without guessing from tensor names.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from udaseg.fileio import UserError, atomic_write

log = logging.getLogger("udaseg.export")

METADATA_KEY = "udaseg"
INPUT_NAME = "input"
OUTPUT_NAMES = ("labels", "logits")


def setup_logging(verbose: bool = False) -> None:
    """CLI logging: udaseg's messages at INFO (DEBUG with -v), other libraries' at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("udaseg").setLevel(logging.DEBUG if verbose else logging.INFO)


class ExportError(UserError, ValueError):
    """An export input or artefact that does not match what a stage expects; the message says what and how.

    A UserError: the command line tools (udaseg.cli.run_cli) print its message alone and exit with code 2.
    """


def save_onnx(model, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` atomically (udaseg.fileio.atomic_write): the file is whole or absent.

    Models over protobuf's 2 GB limit cannot be one file: they are saved with external data beside ``path``
    (``<name>.data``), which ``onnx.save`` writes in place.
    """
    import onnx

    path = Path(path)
    if model.ByteSize() >= 2**31 - 1:
        onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
        return path
    with atomic_write(path) as f:
        f.write(model.SerializeToString())
    return path


def load_onnx(path: str | os.PathLike, check: bool = True, load_external_data: bool = True):
    """Load an ONNX model; corrupted/truncated files and invalid graphs raise ExportError naming the file.

    ``check`` runs ``onnx.checker.check_model(full_check=True)`` (shape inference included). Files over 2 GB are
    checked by path, as protobuf cannot hold them in memory.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file; create it with export/to_onnx.py")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as e:  # DecodeError, OSError on missing external data, ...
        raise ExportError(
            f"{path}: not a readable ONNX model ({type(e).__name__}: {e}); the file is truncated or corrupted, "
            "re-export it with export/to_onnx.py"
        ) from e
    if check:
        check_onnx(model if path.stat().st_size < 2**31 else str(path), name=str(path))
    return model


def check_onnx(model_or_path: Any, name: str = "<model>") -> None:
    """``onnx.checker.check_model(full_check=True)`` with the failure turned into an ExportError."""
    import onnx

    try:
        onnx.checker.check_model(model_or_path, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{name}: the ONNX graph is invalid: {e}") from e


def _dtype_name(elem_type: int) -> str:
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name if elem_type else "undefined"


def describe_io(model) -> list[dict[str, Any]]:
    """``[{"name", "kind": "input"|"output", "dtype", "shape"}]``; a dynamic dim is its symbol (str) or None."""
    out = []
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
            out.append({"name": v.name, "kind": kind, "dtype": _dtype_name(t.elem_type), "shape": dims})
    return out


def format_io(io: list[dict[str, Any]]) -> str:
    """One line per tensor: ``input  input   uint8    [1, 3, 512, 1024]``."""
    return "\n".join(f"  {t['kind']:<6} {t['name']:<8} {t['dtype']:<8} {t['shape']}" for t in io)


def get_metadata(model) -> dict[str, Any]:
    """The udaseg metadata dict of an ONNX model ({} for graphs not written by to_onnx.py)."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return {}


def set_metadata(model, meta: dict[str, Any]) -> None:
    """Store ``meta`` as JSON under the udaseg key (replacing an earlier entry)."""
    for i, prop in enumerate(model.metadata_props):
        if prop.key == METADATA_KEY:
            del model.metadata_props[i]
            break
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)


def graph_precision(model) -> str:
    """``"int8"`` (Q/DQ nodes), ``"fp16"`` (float16 weights or casts) or ``"fp32"``: what TensorRT 11 will build."""
    import onnx

    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    for n in model.graph.node:
        if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute):
            return "fp16"
    return "fp32"


def input_spec(model) -> dict[str, Any]:
    """The single image input: ``{"name", "dtype", "shape"}``; other graphs raise ExportError."""
    inputs = [t for t in describe_io(model) if t["kind"] == "input"]
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4 or inputs[0]["shape"][1] != 3:
        raise ExportError(f"expected one (B, 3, H, W) image input, found {[(t['name'], t['shape']) for t in inputs]}")
    return inputs[0]


def ort_session(path: str | os.PathLike, providers: list | None = None, threads: int | None = None):
    """An ONNX Runtime session (CPU unless ``providers`` says otherwise); load errors name the file."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # InvalidGraph, Fail, NoSuchFile ... (onnxruntime's own exception types)
        raise ExportError(f"{path}: ONNX Runtime cannot load this model: {e}") from e


def check_input_shape(shape: tuple[int, ...], expected: list, name: str = INPUT_NAME) -> None:
    """Raise ExportError naming every dim of ``shape`` that a graph input ``expected`` (ints or symbols) rejects."""
    if len(shape) != len(expected):
        raise ExportError(f"input '{name}' has rank {len(expected)} {expected}, got shape {tuple(shape)}")
    bad = [
        f"dim {i}: expected {e}, got {s}"
        for i, (s, e) in enumerate(zip(shape, expected))
        if isinstance(e, int) and e > 0 and s != e
    ]
    if bad:
        raise ExportError(f"input shape {tuple(shape)} does not fit input '{name}' {expected}: " + "; ".join(bad))
