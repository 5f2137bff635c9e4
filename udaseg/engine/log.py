"""The run's metrics file: one JSON row per logging window, evaluation rows, trimmed on resume.

Row keys: `iter`, `stage` (warmup, adapt or eval), `lr`, `grad_norm`, `it_per_s`, `img_per_s`, `miou` (eval rows);
the loop's own loss terms `source_ce`, `feature_distance` (when on) and `total`; every plug-in's loss terms and
metrics as `<plug-in>/<term>` (e.g. `self_training/pseudo_ce`). Values are strict JSON: a NaN/inf (a skipped
step) is written as null.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from udaseg import distributed as dist
from udaseg.fileio import WriteError, describe_os_error, json_text, write_text


def append_jsonl(path: Path, row: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(json_text(row, indent=None))
    except OSError as e:
        raise WriteError(f"cannot write {path}: {describe_os_error(e)}") from e


def trim_jsonl(path: Path, last_iteration: int) -> None:
    """On resume, drop metric rows written after the checkpoint, so curves do not double back.

    A line cut short by a crash mid-append is dropped too."""
    if not path.exists():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and (row.get("iter") or 0) <= last_iteration:
            rows.append(line)
    write_text(path, "".join(r + "\n" for r in rows))


class MetricLog:
    """Averages loss terms and metrics over the logging window; one metrics.jsonl row per flush (rank 0)."""

    def __init__(self, path: Path, images_per_domain: int):
        self.path, self.images = path, images_per_domain
        self.window: dict[str, list[float]] = {}
        self.steps, self.t0 = 0, time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], metrics: dict[str, float]) -> None:
        """Keep the loss tensors (detached, on their device): no host sync until the window is flushed."""
        self.steps += 1
        for k, v in {**{k: v.detach() for k, v in losses.items()}, **metrics}.items():
            self.window.setdefault(k, []).append(v)

    def flush(self, iteration: int, stage: str, lr: float, gnorm: float, domains: int) -> dict:
        rate = self.steps / (time.perf_counter() - self.t0)
        row = {k: float(sum(v)) / len(v) for k, v in self.window.items()}  # one sync per term per window
        row.update(
            iter=iteration, stage=stage, lr=lr, grad_norm=gnorm, it_per_s=rate, img_per_s=rate * self.images * domains
        )
        if dist.is_main():
            append_jsonl(self.path, row)
        self.window = {}
        return row
