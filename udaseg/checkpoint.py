"""Checkpoints: atomic writes, safe loads, and building a model back from one.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that
`torch.load(weights_only=True)` reads it without unpickling arbitrary objects:

    {"model": state_dict, "teacher": state_dict, "optimizer": ..., "scheduler": ..., "methods": {...},
     "rng": {...}, "iteration": int, "config": dict, "model_spec": {"name", "num_classes", "kwargs"}}

`.safetensors` files hold weights only (the student's, or the teacher's when exported with `export_safetensors`);
their metadata carries `model_spec` as JSON so that they can be loaded without the training code's config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from udaseg.fileio import UserError, atomic_write, write_bytes

MODEL_KEYS = ("teacher", "model")  # weights a deployment prefers: the EMA teacher is the better model


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not match what was asked of it (the message names the file)."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically: a reader sees the old file or the new one, never half of one.

    A failed write (disk full, no permission) leaves no temporary file and raises fileio.WriteError naming `path`.
    """
    with atomic_write(path) as f:
        torch.save(payload, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects (`weights_only=True`, or safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint; a write of it was probably cut short")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (an arbitrary file can fail the unpickler in any way: KeyError, IndexError)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path}: not a readable udaseg checkpoint ({type(e).__name__}{': ' + first if first else ''}). "
            "Checkpoints are loaded with weights_only=True; a file holding pickled Python objects is refused."
        ) from e
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(payload).__name__}")
    return payload


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        weights = {k: f.get_tensor(k) for k in f.keys()}
    payload: dict[str, Any] = {"model": weights}
    if "model_spec" in meta:
        payload["model_spec"] = json.loads(meta["model_spec"])
    return payload


def export_safetensors(checkpoint: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write the deployable weights of a training checkpoint as `.safetensors` with its model_spec."""
    from safetensors.torch import save

    payload = load_checkpoint(checkpoint)
    weights = model_weights(payload, checkpoint)
    meta = {"model_spec": json.dumps(payload.get("model_spec", {}))}
    return write_bytes(output, save({k: v.contiguous() for k, v in weights.items()}, metadata=meta))


def model_weights(payload: dict[str, Any], path: str | os.PathLike = "<checkpoint>", prefer: str = "teacher") -> dict:
    """The state dict to deploy: the `prefer`red entry if present, else the other one."""
    order = (prefer,) + tuple(k for k in MODEL_KEYS if k != prefer)
    for key in order:
        if isinstance(payload.get(key), dict) and payload[key]:
            return payload[key]
    raise CheckpointError(f"{path}: holds no model weights (looked for {', '.join(order)}; found {sorted(payload)})")


def load_model(
    path: str | os.PathLike,
    prefer: str = "teacher",
    expect_name: str | None = None,
    expect_classes: int | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model described by a checkpoint's `model_spec` and load its weights (eval mode, CPU).

    `expect_name` / `expect_classes` turn a mismatch into an error that names both sides.
    Returns (model, info) with info = {"model_spec", "iteration", "config", "weights"}.
    """
    from udaseg.models import build_model

    payload = load_checkpoint(path)
    spec = payload.get("model_spec")
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(f"{path}: no model_spec (architecture and class count) in this checkpoint")
    if expect_name is not None and spec["name"] != expect_name:
        raise CheckpointError(f"{path}: architecture is {spec['name']!r}, expected {expect_name!r}")
    if expect_classes is not None and int(spec["num_classes"]) != expect_classes:
        raise CheckpointError(f"{path}: model has {spec['num_classes']} classes, expected {expect_classes}")
    model = build_model(spec["name"], num_classes=int(spec["num_classes"]), **spec.get("kwargs", {}))
    weights = model_weights(payload, path, prefer)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match architecture {spec['name']!r} with {spec['num_classes']} classes "
            f"(missing {len(missing)} keys, e.g. {missing[:3]}; unexpected {len(unexpected)}, e.g. {unexpected[:3]})"
        )
    model.eval()
    info = {
        "model_spec": spec,
        "iteration": payload.get("iteration"),
        "config": payload.get("config"),
        "weights": next(k for k in (prefer, *MODEL_KEYS) if isinstance(payload.get(k), dict) and payload[k]),
    }
    return model, info
