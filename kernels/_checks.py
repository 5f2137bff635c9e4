"""Argument checks shared by the ops; each op checks its own arguments with these, beside its public function.
Every failure is a ValueError that names the argument."""

from __future__ import annotations

import math

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int64, torch.int32)


def check_float(op: str, name: str, t: object, ndim: int) -> Tensor:
    """Check that ``t`` is a floating tensor with ``ndim`` dimensions; return it."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def check_index(op: str, name: str, t: object, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Check that ``t`` is an int64/int32 tensor of ``shape`` on ``device``; return it."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in INDEX_DTYPES:
        raise ValueError(f"{op}: {name} must be int64 (or int32), got {t.dtype}")
    check_shape(op, name, t, shape)
    check_device(op, name, t, device)
    return t


def check_shape(op: str, name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    """Raise if ``t.shape != shape``."""
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_device(op: str, name: str, t: Tensor, device: torch.device) -> None:
    """Raise if ``t`` is not on ``device``."""
    if t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device} but the other inputs are on {device}")


def check_positive(op: str, name: str, value: object) -> float:
    """Check that ``value`` is a finite number > 0; return it as a float."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{op}: {name} must be a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{op}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_count(op: str, name: str, value: object, low: int, high: int | None = None) -> int:
    """Check that ``value`` is an int in [low, high]; return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{op}: {name} must be an int {bound}, got {value!r}")
    return value
