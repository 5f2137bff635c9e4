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

from collections import Counter
from dataclasses import dataclass, field

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
_ANY_OPS = """Concat Expand EyeLike Flatten Gather GatherElements GatherND Identity If Loop OneHot Reshape ReverseSequence
Shape Size Slice Split Squeeze Tile Transpose Trilu Unsqueeze Where"""

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
    except Exception:  # noqa: BLE001 - an unusual graph: check what the file itself declares
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
