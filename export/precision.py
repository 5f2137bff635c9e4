"""Reduced-precision ONNX graphs: FP16 by graph conversion, INT8 as a Q/DQ model calibrated on target images.

Both are what TensorRT 11 needs (it takes precision from the graph) and what TensorRT 10 builds strongly typed;
ONNX Runtime runs both on the CPU, so their accuracy is measured here without a GPU (export/verify.py).

- FP16: ``onnxruntime.transformers.float16`` converts weights and ops, keeping float32 inputs/outputs. Before
  converting, every intermediate float tensor of the fp32 graph is measured on sample images: a value beyond the
  float16 range (65504) raises instead of producing an engine that scores 0 mIoU (TensorRT #3893).
- INT8: ``onnxruntime.quantization.quantize_static`` in QDQ format, symmetric int8 activations and per-channel
  symmetric weights, float biases (the form TensorRT >= 10 consumes), on Conv/MatMul/Gemm only, so resize, argmax
  and the class-map casts stay float/int as exported.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from udaseg.export.onnx_utils import INPUT_NAME, ExportError, check_onnx

log = logging.getLogger("udaseg.export")

FP16_MAX = 65504.0
QUANTIZED_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def float_tensor_ranges(model, feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, float]:
    """Max |value| of every float32 tensor of ``model`` (inputs, intermediates, outputs) over ``feeds``."""
    import onnx

    from udaseg.export.onnx_utils import ort_session

    probe = onnx.shape_inference.infer_shapes(model)
    known = {o.name for o in probe.graph.output}
    for vi in probe.graph.value_info:
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and vi.name not in known:
            probe.graph.output.append(vi)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        session = ort_session(path)
        names = [o.name for o in session.get_outputs()]
        ranges: dict[str, float] = {}
        for feed in feeds:
            for name, value in zip(names, session.run(names, feed)):
                if value.dtype == np.float32 and value.size:
                    ranges[name] = max(ranges.get(name, 0.0), float(np.abs(value).max()))
            for name, value in feed.items():
                ranges[name] = max(ranges.get(name, 0.0), float(np.abs(value.astype(np.float32)).max()))
    return ranges


def convert_fp16(model, feeds: list[dict[str, np.ndarray]], margin: float = 1.0):
    """FP16 copy of an fp32 ``model`` with float32 inputs/outputs, after checking fp16 range on ``feeds``.

    Raises ExportError when an intermediate tensor exceeds ``FP16_MAX / margin`` (named, with its value), or when
    the converted graph produces non-finite outputs on ``feeds``.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    ranges = float_tensor_ranges(model, feeds)
    over = sorted(((v, k) for k, v in ranges.items() if v > FP16_MAX / margin), reverse=True)
    if over:
        worst = ", ".join(f"{k} (max |x| = {v:.4g})" for v, k in over[:5])
        raise ExportError(
            f"float16 would overflow: {len(over)} tensors exceed {FP16_MAX / margin:.0f}: {worst}. Keep this model "
            "in fp32 (--precision fp32) or int8, or retrain with smaller activations."
        )
    peak = max(ranges.items(), key=lambda kv: kv[1], default=("-", 0.0))
    log.info("fp16 range check: largest |activation| %.4g in %s (float16 max %.0f)", peak[1], peak[0], FP16_MAX)
    fp16 = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    sorted_model = OnnxModel(fp16)
    sorted_model.topological_sort()  # the converter appends its input casts at the end of the node list
    fp16 = sorted_model.model
    check_onnx(fp16, "fp16 graph")
    _check_finite(fp16, feeds)
    return fp16


def _check_finite(model, feeds: list[dict[str, np.ndarray]]) -> None:
    import onnx

    from udaseg.export.onnx_utils import ort_session

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.onnx"
        onnx.save(model, str(path))
        session = ort_session(path)
        for feed in feeds[:2]:
            for out, value in zip(session.get_outputs(), session.run(None, feed)):
                if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                    raise ExportError(f"the fp16 graph produces non-finite values in output '{out.name}'")


def _reader(feeds: Iterable[dict[str, np.ndarray]]):
    """An onnxruntime CalibrationDataReader over ``feeds`` (built here: onnxruntime is an optional extra)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self._it, None)

    return Reader()


def quantize_int8(
    fp32_path: str | os.PathLike,
    output: str | os.PathLike,
    feeds: list[dict[str, np.ndarray]],
    method: str = "minmax",
) -> None:
    """Write a Q/DQ int8 version of the fp32 ONNX at ``fp32_path`` to ``output``, calibrated on ``feeds``.

    Symmetric int8 activations (per tensor) and weights (per output channel), QDQ format: TensorRT >= 10 builds
    it as an explicitly quantized engine, ONNX Runtime runs it on the CPU. ``method``: minmax | entropy |
    percentile (onnxruntime's calibrators; minmax is the one that never clips the calibration data).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not feeds:
        raise ExportError("int8 calibration needs at least one image: pass --calib NAME:ROOT with target images")
    if method not in CALIBRATION_METHODS:
        raise ExportError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference only: ORT's graph optimisations would merge the Cast chain of the uint8 class map,
        # which TensorRT cannot build (no int32 -> uint8 cast).
        quant_pre_process(str(fp32_path), str(pre), skip_optimization=True, skip_onnx_shape=False)
        quantize_static(
            str(pre),
            str(output),
            _reader(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=QUANTIZED_OPS,
            calibrate_method=calibrate,
            # Biases stay float: TensorRT fuses them into the quantized convolution and has no int32 dequantize.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
    log.info("int8 Q/DQ model calibrated on %d images (%s)", len(feeds), method)


def calibration_feeds(images: Iterable[np.ndarray], input_dtype: str, name: str = INPUT_NAME) -> list[dict]:
    """Feeds ``{name: (1, 3, H, W)}`` from pre-processed ``(3, H, W)`` images (float [0, 1], or uint8)."""
    feeds = []
    for img in images:
        x = img[None]
        feeds.append({name: x.astype(np.uint8 if input_dtype == "uint8" else np.float32)})
    return feeds
