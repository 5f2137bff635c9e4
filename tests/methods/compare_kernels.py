"""Train a method at tiny size with `--kernels torch` and with `--kernels triton`; print how far apart they end.

    TRITON_INTERPRET=1 python tests/methods/compare_kernels.py dida OUT_DIR

Run as a separate process: TRITON_INTERPRET must be set before Triton decorates the kernels. Both runs resume from
one checkpoint taken after the first adaptation step (trained with the torch kernels), so the method state the
kernels read is already filled (DIDA's bank, CPSL's queue and prototypes, HIAST's pool): the first compared step
runs every kernel on real inputs, not on an empty bank. Prints one JSON line: the largest difference of any logged
loss term over the compared iterations, the relative difference at their first step, the loss terms of that step,
the method state the resumed runs started from, and the largest difference of any weight / state tensor at the end.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from tests.helpers import tiny_config
from udaseg.train import train

NOT_LOSSES = ("iter", "stage", "lr", "it_per_s", "img_per_s", "grad_norm")


def loss_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("stage") == "adapt"]


def max_diff(a, b) -> float:
    if isinstance(a, dict):
        return max((max_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel():
        return float((a.double() - b.double()).abs().max())
    return 0.0


def filled(state: dict) -> dict:
    """What the resumed runs start from: entries of the method state that kernels read (0 = still empty)."""
    out = {}
    for name, s in state.items():
        if "bank_labels" in s:
            out[f"{name}.bank_entries"] = int((s["bank_labels"] >= 0).sum())
        if "queue_filled" in s:
            out[f"{name}.queue_filled"] = int(s["queue_filled"])
    return out


def main(method: str, out: Path, overrides: dict) -> None:
    cfg = lambda impl: tiny_config(method, **{"train.kernels": impl, **overrides})  # noqa: E731
    prefill = out / "prefill"
    train(cfg("torch"), prefill, stop_after=cfg("torch").train.warmup_iters + 1)  # warm-up + 1 adaptation step
    start = torch.load(prefill / "last.pt", map_location="cpu", weights_only=True)
    held = {}
    for impl in ("torch", "triton"):
        (out / impl).mkdir(parents=True, exist_ok=True)
        shutil.copy(prefill / "last.pt", out / impl / "last.pt")
        held[impl] = {}
        train(cfg(impl), out / impl, resume=True, state_out=held[impl])
    rows_t, rows_k = loss_rows(out / "torch"), loss_rows(out / "triton")
    keys = [k for k in rows_t[0] if k not in NOT_LOSSES]
    loss_diff = max(abs(a[k] - b[k]) for a, b in zip(rows_t, rows_k) for k in keys)
    # the first compared step sees identical weights, state and inputs: only float32 rounding may differ there
    # (loss terms only: plug-in metrics such as "cpsl/relabelled" count discrete decisions, and one flipped argmax
    #  between two float32 implementations moves them by a pixel's share)
    terms = [k for k in keys if not k.endswith(("relabelled", "kept", "agree", "pasted", "hidden", "threshold"))]
    first = max(abs(rows_t[0][k] - rows_k[0][k]) / max(abs(rows_t[0][k]), 1e-3) for k in terms)
    print(
        json.dumps(
            {
                "iterations": len(rows_t),
                "loss_keys": keys,
                "first_step": {k: rows_t[0][k] for k in terms},
                "loss_diff": loss_diff,
                "first_step_rel_diff": first,
                "start": filled(start["methods"]),
                "state_diff": max_diff(held["torch"], held["triton"]),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
