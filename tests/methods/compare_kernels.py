"""Train a method at tiny size with `--kernels torch` and with `--kernels triton`; print how far apart they end.

    TRITON_INTERPRET=1 python tests/methods/compare_kernels.py dida OUT_DIR

Run as a separate process: TRITON_INTERPRET must be set before Triton decorates the kernels. Prints one JSON line:
the largest difference of any logged loss over the iterations, and of any weight / method-state tensor at the end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tests.helpers import tiny_config
from udaseg.train import train


def losses(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("stage") == "adapt"]


def max_diff(a, b) -> float:
    if isinstance(a, dict):
        return max((max_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel():
        return float((a.double() - b.double()).abs().max())
    return 0.0


def main(method: str, out: Path) -> None:
    held = {}
    for impl in ("torch", "triton"):
        held[impl] = {}
        train(tiny_config(method, **{"train.kernels": impl}), out / impl, state_out=held[impl])
    rows_t, rows_k = losses(out / "torch"), losses(out / "triton")
    keys = [k for k in rows_t[0] if k not in ("iter", "stage", "lr", "it_per_s", "img_per_s", "grad_norm")]
    loss_diff = max(abs(a[k] - b[k]) for a, b in zip(rows_t, rows_k) for k in keys)
    # the first adaptation step sees identical weights and inputs: only float32 rounding may differ there
    # (loss terms only: plug-in metrics such as "cpsl/relabelled" count discrete decisions, and one flipped
    #  argmax between two float32 implementations moves them by a pixel's share)
    losses_only = [k for k in keys if "/" not in k]
    first = max(abs(rows_t[0][k] - rows_k[0][k]) / max(abs(rows_t[0][k]), 1e-3) for k in losses_only)
    print(json.dumps({"iterations": len(rows_t), "loss_keys": keys, "loss_diff": loss_diff,
                      "first_step_rel_diff": first, "state_diff": max_diff(held["torch"], held["triton"])}))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
