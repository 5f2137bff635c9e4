"""What the TensorRT ONNX parser will not take, found before TensorRT is needed (no GPU, no TensorRT install).

    report = parser_report(onnx.load("model.onnx"), trt_major=10)      # or 11
    print(report.format()); report.ok                                   # False: the build would fail

Checked, per node and per tensor:

- operators outside the parser's support list for that TensorRT generation, operators of other domains (ONNX
  Runtime's ``com.microsoft`` fusions: plugins at best), and an opset outside the parser's range;
- the data type of each operator's first (data) input against the types the parser documents for it;
- Resize modes the parser lacks (cubic, antialias), Q/DQ with a non-zero zero point;
- ``uint8`` anywhere but at the graph's edges, and casts to ``uint8`` from anything but float (TensorRT converts to
  uint8 only from float/half: the reason to_onnx.py casts the class map through float);
- float64 tensors (narrowed to float32, clamped to +-FLT_MAX) and int64 ones: TensorRT >= 10 keeps int64
  (8.x narrowed it to int32), so an int64 tensor matters only where its consumer has no int64 kernel (the type
  check above) and at the graph's outputs, which the C++ runner must then read as 8-byte values;
- dynamic input dims with no optimisation profile (``--min/--opt/--max``).

Source of the tables: onnx-tensorrt's docs/operators.md for TensorRT 10.15 (opsets 9-24) and the parser changes
in the TensorRT 11.0-11.5 release notes (Swish, DFT, opset 25 from 11.5). A parser newer than these tables may
take more: the report names the version it assumed.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udaseg.export.profiles import Profile, resolve_profile

log = logging.getLogger("udaseg.export")

# Type groups of the operator table ("Supported Types" column): FP32 FP16 BF16 [INT32 INT64] [BOOL] ...
_F = frozenset({"float32", "float16", "bfloat16"})
_F2 = frozenset({"float32", "float16"})
_N = _F | {"int32", "int64"}
_A = _N | {"bool"}

_FLOAT_OPS = """Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv ConvTranspose Cos
Cosh CumSum Dropout Einsum Elu Erf Exp Floor Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool GroupNormalization GRU
HardSigmoid HardSwish Hardmax ImageScaler InstanceNormalization IsInf LayerNormalization LeakyRelu Log LogSoftmax LRN
LSTM LpNormalization LpPool MatMul MaxPool MeanVarianceNormalization ParametricSoftplus PRelu QuantizeLinear
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Reciprocal Resize RMSNormalization RNN RotaryEmbedding
Round ScaledTanh Scan Selu Sigmoid Sin Sinh Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Upsample"""
_FLOAT2_OPS = "BlackmanWindow DeformConv GridSample HammingWindow HannWindow Mish NonMaxSuppression NonZero RoiAlign"
_NUMERIC_OPS = """Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less LessOrEqual Max Min Mod
Mul Neg Pad Pow Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Scatter ScatterElements ScatterND Shrink Sign SpaceToDepth Sub Sum TopK"""
_ANY_OPS = """Concat Expand EyeLike Flatten Gather GatherElements GatherND Identity If Loop OneHot Reshape
ReverseSequence Shape Size Slice Split Squeeze Tile Transpose Trilu Unsqueeze Where"""

# Listed as unsupported ("N") by the 10.15 table; kept to say "unsupported" rather than "unknown".
_UNSUPPORTED = """AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor CenterCropPad Col2Im Compress
ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool
MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv
QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength
SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique"""


def _table_10() -> dict[str, frozenset[str]]:
    """op -> data types of its first input that the TensorRT 10 parser takes (onnx-tensorrt, TensorRT 10.15)."""
    ops: dict[str, frozenset[str]] = {}
    for names, types in ((_FLOAT_OPS, _F), (_FLOAT2_OPS, _F2), (_NUMERIC_OPS, _N), (_ANY_OPS, _A)):
        ops.update(dict.fromkeys(names.split(), types))
    ops.update(
        {
            "STFT": frozenset({"float32"}),
            "Mean": _N | {"float8e4m3fn"},
            "Gelu": _N | {"int8"},
            "Cast": _A | {"uint8"},
            "CastLike": _A | {"uint8"},
            "Constant": _A | {"float8e4m3fn", "int4"},
            "ConstantOfShape": _A | {"float8e4m3fn", "int4"},
            "And": frozenset({"bool"}),
            "Or": frozenset({"bool"}),
            "Xor": frozenset({"bool"}),
            "Not": frozenset({"bool"}),
            "Attention": _F | {"int8", "float8e4m3fn"},
            "DequantizeLinear": frozenset({"int8", "float8e4m3fn", "int4", "float4e2m1"}),
            "TensorScatter": _F | {"int32"},
        }
    )
    return ops


def _table_11() -> dict[str, frozenset[str]]:
    """TensorRT 11: the 10.15 table plus Swish (11.0) and DFT (11.2, a cuFFT plugin the parser inserts)."""
    return {**_table_10(), "Swish": _F, "DFT": frozenset({"float32"})}


@dataclass(frozen=True)
class ParserSupport:
    major: int
    opsets: tuple[int, int]  # inclusive range of the default domain's opset
    ops: dict[str, frozenset[str]]
    source: str


SUPPORT = {
    10: ParserSupport(10, (9, 24), _table_10(), "onnx-tensorrt operators.md, TensorRT 10.15"),
    11: ParserSupport(11, (9, 24), _table_11(), "TensorRT 10.15 table + 11.x release notes (opset 25 from 11.5)"),
}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
UNSUPPORTED_OPS = frozenset(_UNSUPPORTED.split()) - {"DFT"}  # DFT is unsupported on 10 only (see _table_11)


@dataclass
class ParserReport:
    """Problems the TensorRT ``major`` ONNX parser would meet; ``errors`` fail the parse or build, ``notes`` don't."""

    major: int
    source: str
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    int64_tensors: list[str] = field(default_factory=list)
    narrowed_tensors: list[str] = field(default_factory=list)  # float64 -> float32
    dynamic_inputs: list[str] = field(default_factory=list)  # inputs with dynamic dims and no profile

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        head = f"TensorRT {self.major} ONNX parser ({self.source}): "
        head += "no blocking problem" if self.ok else f"{len(self.errors)} problem(s)"
        lines = [head] + [f"  error: {e}" for e in self.errors] + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"tensorrt": self.major, "ok": self.ok, "errors": self.errors, "notes": self.notes}


def _elem_types(model) -> dict[str, str]:
    """tensor name -> numpy-style dtype name, after ONNX shape inference (inputs, outputs, initializers too)."""
    import numpy as np
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an unusual graph: check the types the file itself declares
        pass
    types: dict[str, str] = {}

    def name(elem: int) -> str:
        if elem == onnx.TensorProto.FLOAT8E4M3FN:
            return "float8e4m3fn"
        if elem in (onnx.TensorProto.INT4, getattr(onnx.TensorProto, "FLOAT4E2M1", -1)):
            return "int4" if elem == onnx.TensorProto.INT4 else "float4e2m1"
        if elem == onnx.TensorProto.BFLOAT16:
            return "bfloat16"
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name if elem else "undefined"

    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = name(vi.type.tensor_type.elem_type)
    for init in model.graph.initializer:
        types[init.name] = name(init.data_type)
    for node in model.graph.node:  # Constant nodes: their value's type
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = name(a.t.data_type)
    return types


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


class _Findings:
    """Problems grouped by what they are, each with the nodes/tensors it concerns (one line per group)."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], list[str]] = {}

    def add(self, kind: str, what: str, where: str) -> None:
        self.groups.setdefault((kind, what), []).append(where)

    def lines(self, kind: str) -> list[str]:
        out = []
        for (k, what), where in self.groups.items():
            if k == kind:
                more = f", ... ({len(where)} in all)" if len(where) > 4 else ""
                shown = ", ".join(repr(w) for w in where[:4]) + more
                out.append(f"{what}: {shown}")
        return out


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _check_node(node, support: ParserSupport, types: dict[str, str], consts: dict, found: _Findings) -> None:
    where = node.name or (node.output[0] if node.output else node.op_type)
    if node.domain not in ("", "ai.onnx"):
        found.add("error", f"{node.op_type} of domain '{node.domain}' (the parser takes it only as a plugin)", where)
        return
    allowed = support.ops.get(node.op_type)
    if allowed is None:
        reason = "not supported" if node.op_type in UNSUPPORTED_OPS else "not in the parser's operator list"
        found.add("error", f"{node.op_type}: {reason}", where)
        return
    data = types.get(node.input[0]) if node.input and node.input[0] else None
    if data and data not in ("undefined", *allowed):
        found.add("error", f"{node.op_type} on {data} (the parser takes {', '.join(sorted(allowed))})", where)
    _check_attributes(node, types, consts, found, where)


def _check_attributes(node, types: dict[str, str], consts: dict, found: _Findings, where: str) -> None:
    import numpy as np
    import onnx

    op = node.op_type
    if op == "Resize":
        mode, transform = _attr(node, "mode", "nearest"), _attr(node, "coordinate_transformation_mode", "half_pixel")
        if mode not in RESIZE_MODES:
            found.add("error", f"Resize mode '{mode}' (TensorRT: nearest, linear)", where)
        if transform not in RESIZE_TRANSFORMS:
            found.add("error", f"Resize coordinate_transformation_mode '{transform}'", where)
        if _attr(node, "antialias", 0):
            found.add("error", "Resize with antialias", where)
        if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            found.add("error", "Resize keep_aspect_ratio_policy other than 'stretch'", where)
    elif op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
        zero = consts.get(node.input[2])
        if zero is None or np.any(zero != 0):
            found.add("error", f"{op} with a non-zero (or non-constant) zero point (TensorRT: symmetric only)", where)
    elif op == "Cast" and _attr(node, "to") == onnx.TensorProto.UINT8:
        source = types.get(node.input[0], "undefined")
        if source not in ("float32", "float16", "undefined"):
            found.add("error", f"Cast {source} -> uint8 (TensorRT converts to uint8 only from float32/float16)", where)
    elif op in ("MaxPool", "AveragePool", "LpPool") and any(d != 1 for d in _attr(node, "dilations", []) or []):
        found.add("error", f"{op} with dilations", where)
    elif op == "TopK" and _attr(node, "sorted", 1) != 1:
        found.add("error", "TopK with sorted=0", where)


def _check_tensors(model, types: dict[str, str], found: _Findings) -> list[str]:
    """uint8 inside the graph (error), float64 (narrowed), int64 (kept; at outputs noted). Returns int64 names."""
    edges = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    outputs = {v.name for v in model.graph.output}
    int64 = []
    for name, dtype in types.items():
        if dtype == "uint8" and name not in edges:
            found.add("error", "uint8 tensor inside the graph (TensorRT: uint8 only at network inputs/outputs)", name)
        elif dtype == "float64":
            found.add("narrowed", "float64 narrowed to float32 by the parser (clamped to +-FLT_MAX)", name)
        elif dtype == "int64":
            int64.append(name)
            if name in outputs:
                found.add("note", "int64 graph output (kept as int64: a C++ reader takes 8 bytes per value)", name)
    return int64


def _dynamic_inputs(model) -> list[str]:
    initializers = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        dims = vi.type.tensor_type.shape.dim
        dynamic = [i for i, d in enumerate(dims) if not d.HasField("dim_value") or d.dim_value <= 0]
        if dynamic:
            out.append(f"{vi.name} (dims {dynamic})")
    return out


def parser_report(model, trt_major: int, has_profile: bool = False) -> ParserReport:
    """What the ONNX parser of TensorRT ``trt_major`` (10 or 11) will not take in ``model`` (an onnx.ModelProto).

    ``has_profile``: an optimisation profile (--min/--opt/--max) will be given for the dynamic input dims.
    """
    from onnx import numpy_helper

    if trt_major not in SUPPORT:
        raise ValueError(f"no parser table for TensorRT {trt_major}; udaseg knows {sorted(SUPPORT)}")
    support = SUPPORT[trt_major]
    report = ParserReport(trt_major, support.source)
    found = _Findings()
    lo, hi = support.opsets
    opset = _opset(model)
    if not lo <= opset <= hi:
        later = " (TensorRT 11.5 parses opset 25)" if trt_major == 11 and opset == 25 else ""
        report.errors.append(f"opset {opset} is outside the parser's range {lo}-{hi}{later}")
    types = _elem_types(model)
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if len(i.dims) <= 1}
    for node in model.graph.node:
        _check_node(node, support, types, consts, found)
    report.int64_tensors = _check_tensors(model, types, found)
    report.errors += found.lines("error")
    report.narrowed_tensors = [w for (k, _), ws in found.groups.items() if k == "narrowed" for w in ws]
    report.notes += found.lines("narrowed") + found.lines("note")
    if report.int64_tensors:
        report.notes.append(
            f"{len(report.int64_tensors)} int64 tensors (shape arithmetic, argmax indices): TensorRT >= 10 keeps "
            "int64 (8.x narrowed it to int32); the operator type check above covers their consumers"
        )
    report.dynamic_inputs = _dynamic_inputs(model)
    if report.dynamic_inputs and not has_profile:
        report.errors.append(
            f"dynamic input dims without an optimisation profile: {', '.join(report.dynamic_inputs)}; "
            "give --min/--opt/--max shapes (e.g. --opt 1x3x512x1024)"
        )
    counts = Counter(n.op_type for n in model.graph.node)
    report.notes.append(f"{sum(counts.values())} nodes, {len(counts)} operator types, opset {opset}")
    return report


def installed_or_all(requested: int | None = None) -> list[int]:
    """TensorRT majors to check: ``requested``, else the installed tensorrt's, else every known one (10 and 11)."""
    if requested is not None:
        return [requested]
    try:
        import tensorrt as trt

        major = int(str(trt.__version__).split(".")[0])
        return [major] if major in SUPPORT else sorted(SUPPORT)
    except (ImportError, AttributeError, ValueError):  # absent, or only the type stubs (a namespace package)
        return sorted(SUPPORT)


# ----------------------------------------------------------------------------- preflight of export/to_trt.py
@dataclass
class OnnxInfo:
    """An ONNX file on its way to TensorRT: its I/O, udaseg metadata, precision and input profile."""

    path: Path
    io: list[dict]
    metadata: dict
    graph_precision: str
    profile: Profile | None  # None: dynamic dims and no --opt shape (only with require_profile=False)
    model: Any = field(default=None, repr=False)  # the onnx.ModelProto (simplified when that helped)
    simplified: dict = field(default_factory=dict)  # export/simplify.py's info

    @property
    def example_shape(self) -> tuple[int, ...]:
        """The profile's opt shape, else the export size of a dynamic graph (batch 1)."""
        if self.profile is not None:
            return tuple(self.profile.opt)
        export = self.metadata.get("export", {})
        inp = next(t for t in self.io if t["kind"] == "input")
        fallback = [1, 3, export.get("height", 512), export.get("width", 1024)]
        return tuple(d if isinstance(d, int) else f for d, f in zip(inp["shape"], fallback))


def inspect_onnx(
    path: str | os.PathLike,
    min_s: str | None = None,
    opt_s: str | None = None,
    max_s: str | None = None,
    require_profile: bool = True,
) -> OnnxInfo:
    """Load and check the ONNX, log its I/O, and resolve the input profile (all before TensorRT is needed)."""
    from udaseg.export.onnx_utils import describe_io, get_metadata, graph_precision, input_spec, load_onnx

    model = load_onnx(path)
    io = describe_io(model)
    inp = input_spec(model)
    dynamic = any(not isinstance(d, int) for d in inp["shape"])
    profile = None
    if require_profile or not dynamic or opt_s is not None:
        profile = resolve_profile(inp["name"], inp["shape"], min_s, opt_s, max_s)
    for t in io:
        log.info("%s %-7s %-8s %s", t["kind"], t["name"], t["dtype"], t["shape"])
    return OnnxInfo(Path(path), io, get_metadata(model), graph_precision(model), profile, model)


def simplify_graph(info: OnnxInfo) -> OnnxInfo:
    """onnxslim where it removes nodes and ONNX Runtime gives the same results (export/simplify.py)."""
    from udaseg.export.simplify import sample_feeds, simplify_onnx

    feeds = sample_feeds(info.model, info.example_shape, count=1)  # one image: 4 CPU runs at full size in all
    info.model, info.simplified = simplify_onnx(info.model, feeds)
    if not info.simplified["applied"]:
        log.info("graph kept as exported (%s)", info.simplified.get("reason"))
    return info


def parser_check(info: OnnxInfo, majors: list[int], quiet: bool = False) -> dict[int, ParserReport]:
    """What the ONNX parser of each TensorRT major in ``majors`` will not take (logged unless ``quiet``)."""
    reports = {}
    for major in majors:
        report = parser_report(info.model, major, has_profile=info.profile is not None)
        if not quiet:
            (log.info if report.ok else log.error)("%s", report.format())
        reports[major] = report
    return reports
