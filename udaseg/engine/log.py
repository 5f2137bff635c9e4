"""The run's metrics file: one JSON row per logging window, evaluation rows, trimmed on resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from udaseg import distributed as dist


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def trim_jsonl(path: Path, last_iteration: int) -> None:
    """On resume, drop metric rows written after the checkpoint, so curves do not double back."""
    if not path.exists():
        return
    rows = [r for r in path.read_text().splitlines() if r and json.loads(r).get("iter", 0) <= last_iteration]
    path.write_text("".join(r + "\n" for r in rows))


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
        row.update(iter=iteration, stage=stage, lr=lr, grad_norm=gnorm, it_per_s=rate,
                   img_per_s=rate * self.images * domains)
        if dist.is_main():
            append_jsonl(self.path, row)
        self.window = {}
        return row
