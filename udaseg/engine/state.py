"""The training loop's state as types, what a checkpoint holds of it, and how it is put back.

    Stage   one stage of the schedule: warm-up or adaptation, its iteration range and its plug-ins
    History what the run has learnt about itself (the "before" evaluation, wall time): checkpointed
    Run     everything the loop holds: models, optimizer, plug-ins, data, and where it stands

A checkpoint is plain tensors, numbers, strings, lists and dicts: loadable with torch.load(weights_only=True).
"""

from __future__ import annotations

import dataclasses
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from udaseg.checkpoint import load_checkpoint, model_weights
from udaseg.config import ConfigError


@dataclass
class Stage:
    """Iterations [start, end) trained with `methods`; `spec` is what the user asked for (`--method` / `--warmup`)."""

    name: str  # "warmup" or "adapt"
    start: int
    end: int
    methods: list  # list[Method], in hook order
    spec: str

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def uses_target_images(self) -> bool:
        return any(m.uses_target_images for m in self.methods)


@dataclass
class TrainData:
    """The run's datasets: training views of source and target, the validation set (None without evaluation)."""

    source: Any  # engine.data.TrainView
    target: Any  # engine.data.TrainView
    val: Any  # a labelled dataset, or None with train.evaluate=false
    rcs: tuple[list[float], list[list[int]]] | None = None  # rare-class sampling tables (engine.data.rcs_tables)


@dataclass
class History:
    """What a run records about itself; checkpointed (as a dict) so a resumed run reports the same."""

    before_recorded: bool = False  # the "before adaptation" evaluation happened (every rank agrees)
    before: dict | None = None  # its result (rank 0)
    before_samples: dict | None = None  # its sample predictions for samples.png (rank 0)
    wall_time_s: float = 0.0  # training time of the earlier pieces of a resumed run

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> History:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


@dataclass
class Run:
    """Everything the loop holds. `iteration` is the number of finished steps; `saved_at` that of last.pt."""

    student: nn.Module
    teacher: nn.Module
    optimizer: torch.optim.Optimizer
    heads: dict[str, nn.Module]  # "<method>.<module>": the plug-ins' trainable modules
    methods: dict[str, Any]  # name -> Method, of every stage
    data: TrainData
    device: torch.device
    model_spec: dict[str, Any]
    config_dict: dict[str, Any]
    history: History = field(default_factory=History)
    t0: float = field(default_factory=time.perf_counter)
    iteration: int = 0
    saved_at: int | None = None  # iteration of the last.pt this process wrote or resumed from
    bad_in_a_row: int = 0  # consecutive skipped (non-finite) steps
    done: bool = False  # both stages finished (not stopped by a signal or stop_after)
    monitor: Any = None  # engine.monitor.Monitor: pseudo-label diagnostics, label-free checkpoint selection
    feature_distance: Any = None  # engine.feature_distance.FeatureDistance when feature_distance.weight > 0


# ----------------------------------------------------------------------------- random state
def capture_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the legacy global stream user code may draw from)
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    legacy = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    np.random.set_state(legacy)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- time and memory
def elapsed(run: Run) -> float:
    """Training wall time, summed over the resumed pieces of a run."""
    return run.history.wall_time_s + time.perf_counter() - run.t0


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ----------------------------------------------------------------------------- skipped steps
def snapshot_buffers(run: Run) -> list[torch.Tensor]:
    """Copies of the student's and the heads' buffers (BatchNorm statistics): a train-mode forward updates them
    before the loop knows whether the step's loss is finite, so a skipped step puts them back."""
    return [b.detach().clone() for b in _buffers(run)]


def restore_buffers(run: Run, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for b, s in zip(_buffers(run), saved):
            b.copy_(s)


def _buffers(run: Run) -> list[torch.Tensor]:
    return [*run.student.buffers(), *(b for m in run.heads.values() for b in m.buffers())]


def non_finite(payload: Any, path: str = "") -> list[str]:
    """Names of the floating tensors in a (nested) checkpoint payload that hold NaN or inf."""
    if isinstance(payload, torch.Tensor):
        return [path] if payload.is_floating_point() and not bool(torch.isfinite(payload).all()) else []
    if isinstance(payload, dict):
        return [n for k, v in payload.items() for n in non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(payload, (list, tuple)):
        return [n for i, v in enumerate(payload) for n in non_finite(v, f"{path}[{i}]")]
    return []


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_payload(run: Run, iteration: int) -> dict[str, Any]:
    run.history.wall_time_s = elapsed(run)
    run.t0 = time.perf_counter()
    return {
        "model": run.student.state_dict(),
        "teacher": run.teacher.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": {"iteration": iteration},
        "heads": {k: m.state_dict() for k, m in run.heads.items()},
        "methods": {k: m.state_dict() for k, m in run.methods.items()},
        "rng": capture_rng(),
        "iteration": iteration,
        "config": run.config_dict,
        "model_spec": run.model_spec,
        "history": run.history.to_dict(),
    }


def restore(run: Run, path: Path) -> int:
    """Put a last.pt back into `run`; returns its iteration."""
    payload = load_checkpoint(path)
    try:
        run.student.load_state_dict(payload["model"])
        run.teacher.load_state_dict(payload["teacher"])
        run.optimizer.load_state_dict(payload["optimizer"])
        for k, m in run.heads.items():
            m.load_state_dict(payload["heads"][k])
        for k, m in run.methods.items():
            m.load_state_dict(payload["methods"].get(k, {}))
        restore_rng(payload["rng"])
    except (KeyError, ValueError, RuntimeError) as e:
        from udaseg.checkpoint import CheckpointError

        raise CheckpointError(
            f"{path}: does not match this run ({type(e).__name__}: {str(e)[:300]}); it was "
            f"written by another configuration: resume with the run's own config.yaml"
        ) from e
    run.history = History.from_dict(payload.get("history"))
    run.t0 = time.perf_counter()
    run.iteration = run.saved_at = int(payload["iteration"])
    return run.iteration


def init_weights(run: Run, path: str) -> None:
    """Start from another run's weights (e.g. a shared warm-up): student and teacher, not the optimizer."""
    payload = load_checkpoint(path)
    spec, mine = payload.get("model_spec", {}), run.model_spec
    if spec and (spec.get("name"), spec.get("num_classes")) != (mine["name"], mine["num_classes"]):
        raise ConfigError(
            f"train.init={path}: a {spec.get('name')} model with {spec.get('num_classes')} classes, "
            f"but this run trains {mine['name']} with {mine['num_classes']}"
        )
    run.student.load_state_dict(model_weights(payload, path, prefer="model"))
    run.teacher.load_state_dict(model_weights(payload, path, prefer="teacher"))
