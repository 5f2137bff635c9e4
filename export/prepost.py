"""Pre- and post-processing shared by every runtime: PyTorch, ONNX Runtime, TensorRT (Python) and the C++ library.

This file is the reference: ``export/runtime/src/prepost.cpp`` computes the same bits (same float32 operations in
the same order, an ``exp`` written out as a polynomial), and tests/export/test_runtime_cpp.py checks that through the
pybind11 bindings ``udaseg._runtime``.

Pipeline of one frame::

    image (H0, W0, 3) uint8 RGB --preprocess--> (3, H, W) float32 in [0, 1]   (or uint8 for uint8-input graphs)
        --model--> labels (H, W) and/or logits (C, H, W)
        --argmax / confidence / colorize--> class map, confidence, colour map at (H, W)
        --resize_nearest--> class map at (H0, W0)

ImageNet mean/std is applied inside the model (its first layer), so pre-processing only resizes and scales to
[0, 1]; ``mean``/``std`` exist for graphs that expect normalised input from outside.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "argmax",
    "colorize",
    "confidence",
    "exp_neg",
    "postprocess",
    "preprocess",
    "preprocess_u8",
    "resize_bilinear",
    "resize_nearest",
]

_F = np.float32


def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of one axis for a half-pixel bilinear resize (PyTorch align_corners=False)."""
    scale = _F(in_size) / _F(out_size)
    src = (np.arange(out_size, dtype=_F) + _F(0.5)) * scale - _F(0.5)
    src = np.maximum(src, _F(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)  # src >= 0: truncation is floor
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0.astype(_F)
    w0 = _F(1) - w1
    return i0, i1, w0, w1


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}")


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize, half-pixel centres, no antialias: ``(H0, W0, 3)`` uint8 -> ``(height, width, 3)`` float32.

    Matches ``F.interpolate(mode="bilinear", align_corners=False)`` to float rounding; the same size is exact.
    """
    _check_image(image)
    if height <= 0 or width <= 0:
        raise ValueError(f"output size must be positive, got {height}x{width}")
    y0, y1, hy, ly = _taps(image.shape[0], height)
    x0, x1, hx, lx = _taps(image.shape[1], width)
    img = image.astype(_F)
    r0, r1 = img[y0], img[y1]  # (height, W0, 3)
    hx, lx = hx[None, :, None], lx[None, :, None]
    top = hx * r0[:, x0] + lx * r0[:, x1]  # (height, width, 3)
    bot = hx * r1[:, x0] + lx * r1[:, x1]
    return hy[:, None, None] * top + ly[:, None, None] * bot


def preprocess(
    image: np.ndarray,
    height: int,
    width: int,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """``(H0, W0, 3)`` uint8 RGB -> ``(3, height, width)`` float32 ``(v / 255 - mean) / std`` (default: [0, 1])."""
    v = resize_bilinear(image, height, width)
    out = (v / _F(255) - np.asarray(mean, dtype=_F)) / np.asarray(std, dtype=_F)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def preprocess_u8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Same resize rounded half-to-even to uint8, for graphs with uint8 input: ``(3, height, width)`` uint8."""
    v = np.clip(np.rint(resize_bilinear(image, height, width)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(v.transpose(2, 0, 1))


def argmax(logits: np.ndarray, dtype: type = np.uint8) -> np.ndarray:
    """``(C, H, W)`` float32 -> ``(H, W)`` class map: first maximum on ties; NaN never beats channel 0."""
    if logits.ndim != 3 or not 1 <= logits.shape[0] <= 256:
        raise ValueError(f"logits must be (C, H, W) with 1 <= C <= 256, got {logits.shape}")
    logits = np.asarray(logits, dtype=_F)
    best, idx = logits[0].copy(), np.zeros(logits.shape[1:], dtype=np.int32)
    for c in range(1, logits.shape[0]):  # the C++ loop, vectorised over pixels
        better = logits[c] > best
        best = np.where(better, logits[c], best)
        idx[better] = c
    return idx.astype(dtype)


def exp_neg(x: np.ndarray) -> np.ndarray:
    """``exp(x)`` for ``x <= 0``: Cephes' expf polynomial (relative error < 2e-7), clamped below at -87 (NaN too).

    Written out instead of ``np.exp`` so that C++ (which would call the platform's ``expf``) gets the same bits.
    """
    x = np.asarray(x, dtype=_F)
    x = np.where(x >= _F(-87.0), x, _F(-87.0))  # NaN and -inf clamp too: defined, and the same in C++
    n = np.rint(x * _F(1.44269504088896341))
    r = x - n * _F(0.693359375)  # ln 2 in two parts: n * 0.693359375 is exact
    r = r - n * _F(-2.12194440e-4)
    z = r * r
    p = np.full_like(r, _F(1.9875691500e-4))
    for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + _F(coef)
    p = p * z + r + _F(1.0)
    return np.ldexp(p, n.astype(np.int32))


def confidence(logits: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` float32 -> ``(H, W)`` largest softmax probability, ``1 / sum_c exp(l_c - max_c l)``."""
    logits = np.asarray(logits, dtype=_F)
    m = logits[0]
    for c in range(1, logits.shape[0]):
        m = np.where(m < logits[c], logits[c], m)  # std::max(m, v)
    s = np.zeros_like(m)
    for c in range(logits.shape[0]):  # sequential sum, the C++ order
        s = s + exp_neg(logits[c] - m)
    return _F(1.0) / s


def colorize(labels: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """``(H, W)`` class ids -> ``(H, W, 3)`` uint8 colours; ids without a colour (ignore = 255) are black.

    ``palette``: ``(K, 3)`` uint8, the Cityscapes palette by default.
    """
    if palette is None:
        from udaseg.data.labels import PALETTE

        palette = np.asarray(PALETTE, dtype=np.uint8)
    lut = np.zeros((256, 3), dtype=np.uint8)
    k = min(len(palette), 256)
    lut[:k] = np.asarray(palette, dtype=np.uint8)[:k]
    return lut[np.clip(labels, 0, 255).astype(np.uint8)]


def resize_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest resize of a class map, PyTorch ``mode="nearest"``: ``src = min(floor(dst * in / out), in - 1)``."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got {labels.shape}")
    if height <= 0 or width <= 0:
        raise ValueError(f"output size must be positive, got {height}x{width}")

    def index(in_size: int, out_size: int) -> np.ndarray:
        scale = _F(in_size) / _F(out_size)
        return np.minimum(np.floor(np.arange(out_size, dtype=_F) * scale).astype(np.int64), in_size - 1)

    return labels[index(labels.shape[0], height)[:, None], index(labels.shape[1], width)[None, :]]


def postprocess(logits: np.ndarray, with_confidence: bool = False) -> dict[str, np.ndarray]:
    """``(C, H, W)`` logits -> ``{"labels": (H, W) uint8, "color": (H, W, 3) uint8[, "confidence": (H, W)]}``."""
    labels = argmax(logits)
    out = {"labels": labels, "color": colorize(labels)}
    if with_confidence:
        out["confidence"] = confidence(logits)
    return out
