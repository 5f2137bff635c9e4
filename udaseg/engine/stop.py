"""Stopping together: SIGINT/SIGTERM on any rank, and the per-step flags every rank agrees on."""

from __future__ import annotations

import math
import signal
import threading

import torch
from tqdm import tqdm

from udaseg import distributed as dist


def step_flags(losses: dict[str, torch.Tensor], stop: StopFlag, iteration: int) -> tuple[bool, bool]:
    """(every rank's loss is finite, some rank was asked to stop): one host sync per step for the finite check,
    and under DDP one tiny all-reduce, so that every rank skips, and stops, at the same step."""
    values = torch.stack([v.detach().float() for v in losses.values()])
    finite_here = bool(torch.isfinite(values).all())
    if not finite_here:
        bad = {k: v for k, v in zip(losses, values.tolist()) if not math.isfinite(v)}
        tqdm.write(f"iteration {iteration}: non-finite loss {bad} on rank {dist.rank()}")
    bad_somewhere, stopping = dist.any_flags(not finite_here, stop.set)
    return not bad_somewhere, stopping


class StopFlag:
    """SIGINT/SIGTERM, on any rank: every rank finishes the current step, last.pt is written, train() returns.

    Installed on every rank; the flag is shared through `step_flags`. A second Ctrl-C stops a single process at
    once; under DDP it is not escalated (torchrun forwards the terminal's SIGINT, so each worker gets it twice).
    """

    def __init__(self):
        self.set, self.old = False, {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)

    def __call__(self, signum, frame):
        if self.set and signum == signal.SIGINT and dist.world_size() == 1:
            raise KeyboardInterrupt
        if not self.set and dist.is_main():
            tqdm.write("stopping after this step; last.pt will hold the run (continue with --resume)")
        self.set = True
