"""What a checkpoint holds of a run, and how it is put back.

Everything is plain tensors, numbers, strings, lists and dicts: loadable with torch.load(weights_only=True).
The `run` dict is the training loop's (udaseg/train.py): student, teacher, optimizer, heads, methods, history.
"""

from __future__ import annotations

import random
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udaseg.checkpoint import load_checkpoint, model_weights
from udaseg.config import ConfigError


def capture_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the legacy global stream user code may draw from)
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((  # noqa: NPY002
        n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def elapsed(run: dict) -> float:
    """Training wall time, summed over the resumed pieces of a run."""
    return run["history"].get("wall_time_s", 0.0) + time.perf_counter() - run["t0"]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def checkpoint_payload(run: dict, iteration: int) -> dict[str, Any]:
    run["history"]["wall_time_s"] = elapsed(run)
    run["t0"] = time.perf_counter()
    return {
        "model": run["student"].state_dict(),
        "teacher": run["teacher"].state_dict(),
        "optimizer": run["optimizer"].state_dict(),
        "scheduler": {"iteration": iteration},
        "heads": {k: m.state_dict() for k, m in run["heads"].items()},
        "methods": {k: m.state_dict() for k, m in run["methods"].items()},
        "rng": capture_rng(),
        "iteration": iteration,
        "config": run["config_dict"],
        "model_spec": run["model_spec"],
        "history": run["history"],
    }


def restore(run: dict, path: Path) -> int:
    payload = load_checkpoint(path)
    run["student"].load_state_dict(payload["model"])
    run["teacher"].load_state_dict(payload["teacher"])
    run["optimizer"].load_state_dict(payload["optimizer"])
    for k, m in run["heads"].items():
        m.load_state_dict(payload["heads"][k])
    for k, m in run["methods"].items():
        m.load_state_dict(payload["methods"].get(k, {}))
    restore_rng(payload["rng"])
    run["history"] = payload.get("history", {})
    run["t0"] = time.perf_counter()
    return int(payload["iteration"])


def init_weights(run: dict, path: str) -> None:
    """Start from another run's weights (e.g. a shared warm-up): student and teacher, not the optimizer."""
    payload = load_checkpoint(path)
    spec = payload.get("model_spec", {})
    if spec and (spec.get("name"), spec.get("num_classes")) != (run["model_spec"]["name"],
                                                               run["model_spec"]["num_classes"]):
        raise ConfigError(f"train.init={path}: a {spec.get('name')} model with {spec.get('num_classes')} classes, "
                          f"but this run trains {run['model_spec']['name']} with {run['model_spec']['num_classes']}")
    run["student"].load_state_dict(model_weights(payload, path, prefer="model"))
    run["teacher"].load_state_dict(model_weights(payload, path, prefer="teacher"))
