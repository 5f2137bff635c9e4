"""Test utilities: a tiny training config, resume-exactness and two-process DDP runners, where Triton runs.

cfg = tiny_config("dida", **{"methods.dida.bank_per_class": 8})
check_resume_exact(cfg, tmp_path)            # stopped + resumed == uninterrupted, weights and method state
states = run_ddp(cfg, tmp_path)              # two gloo processes; per-rank final state dicts
assert_states_equal(states[0], states[1])
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from udaseg.config import Config, from_dict
from udaseg.config import apply_overrides as _apply

ROOT = Path(__file__).resolve().parents[1]  # the repository (subprocess tests run scripts from here)


def triton_kernels_present() -> bool:
    """Triton importable: the kernels then run under TRITON_INTERPRET=1 on CPU tensors."""
    return importlib.util.find_spec("triton") is not None


TINY = [
    "data.crop=[32, 64]",
    "data.batch_size=2",
    "data.workers=0",
    "data.scale_range=[1.0, 1.0]",
    "data.rcs_min_pixels=4",
    "data.synthetic={count: 12, size: [48, 96]}",
    "train.warmup_iters=2",
    "train.iters=3",
    "train.eval_every=0",
    "train.ckpt_every=0",
    "train.log_every=1",
    "train.samples=1",
    "train.threads=1",
    "optim.warmup_iters=1",
    "model.kwargs={width: 8}",
]


def tiny_config(method: str = "self_training", **overrides: Any) -> Config:
    """A config that trains for 2 + 3 iterations on 32x64 crops of the synthetic benchmark, in one process."""
    extra = [f"{k}={v}" for k, v in overrides.items()]
    return from_dict(_apply({}, [*TINY, f"train.method={method}", *extra]))


def final_state(out: Path) -> dict[str, Any]:
    """Weights and method state of a run's last.pt (written at the end of every stage)."""
    payload = torch.load(Path(out) / "last.pt", map_location="cpu", weights_only=True)
    return {k: payload[k] for k in ("model", "teacher", "heads", "methods", "optimizer", "iteration")}


def assert_states_equal(a: Any, b: Any, path: str = "state") -> None:
    """Exact equality of nested dicts/lists of tensors and numbers, naming the first difference."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys differ: {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_states_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_states_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{path}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
        diff = (a.double() - b.double()).abs().max().item() if a.numel() and a.is_floating_point() else 0
        assert torch.equal(a, b), f"{path}: tensors differ (max abs diff {diff})"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def check_resume_exact(cfg: Config, tmp_path: Path, stop_after: int = 3) -> None:
    """A run stopped after `stop_after` steps and resumed ends with exactly the uninterrupted run's state."""
    from udaseg.train import train

    train(cfg, tmp_path / "whole")
    train(cfg, tmp_path / "pieces", stop_after=stop_after)
    stopped = torch.load(tmp_path / "pieces" / "last.pt", map_location="cpu", weights_only=True)["iteration"]
    assert stopped == stop_after
    train(cfg, tmp_path / "pieces", resume=True)
    assert_states_equal(final_state(tmp_path / "whole"), final_state(tmp_path / "pieces"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg: Config, out: Path) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from udaseg import distributed as dist
    from udaseg.train import train

    try:
        held: dict = {}
        train(cfg, out, state_out=held)
        # every rank saves what it holds in memory: weights and method state must agree across ranks
        torch.save(held, out / f"rank{rank}.pt")
    finally:
        dist.shutdown()


def run_ddp(cfg: Config, out: Path, world: int = 2, timeout: float = 600) -> list[dict[str, Any]]:
    """Train with `world` gloo processes; returns each rank's in-memory model, teacher and method state."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.spawn(_ddp_worker, args=(world, _free_port(), cfg, out), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):  # a collective mismatch must fail the test, not hang CI
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"DDP run did not finish in {timeout} s: ranks are probably waiting on each other")
    return [torch.load(out / f"rank{r}.pt", map_location="cpu", weights_only=True) for r in range(world)]


def pseudo_labelled_step(num_classes: int, seed: int = 1, b: int = 2, h: int = 16, w: int = 32, **fields: Any):
    """A Step as the plug-ins see it after self_training's pseudo-label hook, on random data: a compact student,
    teacher probabilities (B, C, H, W), their argmax as pseudo-labels with column 0 ignored, their max as the
    confidence, unit weights. `fields` replace or add Step fields (e.g. pseudo_weight=..., mix_mask=...)."""
    from udaseg.data.labels import IGNORE_INDEX
    from udaseg.methods.base import Step
    from udaseg.models import build_model

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student = build_model("compact", num_classes=num_classes, width=8)
    probs = (4 * torch.randn(b, num_classes, h, w, generator=g)).softmax(1)
    conf, label = probs.max(1)
    label[:, 0] = IGNORE_INDEX
    base = dict(
        iteration=0,
        source_image=torch.rand(b, 3, h, w, generator=g),
        source_label=torch.randint(0, num_classes, (b, h, w), generator=g),
        target_image=torch.rand(b, 3, h, w, generator=g),
        generator=torch.Generator().manual_seed(seed),
        student=student,
        teacher_target={"probs": probs},
        pseudo_label=label,
        pseudo_confidence=conf,
        pseudo_weight=torch.ones(b, h, w),
        class_probs=probs,
    )
    return Step(**{**base, **fields})
