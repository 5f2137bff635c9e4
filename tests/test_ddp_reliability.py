"""DDP faults (issue 12, case 1): Ctrl-C on one rank stops every rank at the same step with last.pt written, and
`torchrun --max-restarts` after a killed worker continues from last.pt and ends with an uninterrupted run's weights.

Two gloo processes on 32x64 crops of the synthetic benchmark; the three runs here take ~40 s on two cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import TINY, _free_port, assert_states_equal, final_state, tiny_config

ROOT = Path(__file__).resolve().parents[1]
LONG = {"train.iters": 30, "train.ckpt_every": 2, "train.warmup_iters": 2}  # long enough to be hit mid-run


def _worker(rank: int, world: int, port: int, cfg, out: Path, resume: bool) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from udaseg import distributed as dist
    from udaseg.train import train

    try:
        held: dict = {}
        train(cfg, out, resume=resume, state_out=held)
        torch.save(held, out / f"rank{rank}.pt")
    finally:
        dist.shutdown()


def _spawn(cfg, out: Path, resume: bool = False):
    out.mkdir(parents=True, exist_ok=True)
    return mp.spawn(_worker, args=(2, _free_port(), cfg, out, resume), nprocs=2, join=False)


def _join(ctx, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"DDP run did not finish in {timeout} s: ranks are probably waiting on each other")


def _train_rows(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return sum(r.get("stage") in ("warmup", "adapt") for r in rows)


def _wait_for_rows(out: Path, n: int, alive, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _train_rows(out) < n:
        assert alive(), "the run ended before the fault could be injected"
        assert time.monotonic() < deadline, f"no {n} metric rows in {timeout} s"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted two-process run's final state."""
    out = tmp_path_factory.mktemp("ddp_reference")
    _join(_spawn(tiny_config("self_training", **LONG), out))
    return final_state(out)


@pytest.mark.slow
def test_sigint_on_one_rank_stops_every_rank_at_the_same_step(tmp_path, reference):
    cfg = tiny_config("self_training", **LONG)
    ctx = _spawn(cfg, tmp_path)
    _wait_for_rows(tmp_path, 5, lambda: all(p.is_alive() for p in ctx.processes))
    os.kill(ctx.processes[1].pid, signal.SIGINT)  # rank 1 only: rank 0 must learn it through the shared flag
    _join(ctx)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    stopped = ranks[0]["iteration"]
    total = cfg.train.warmup_iters + cfg.train.iters
    assert 2 < stopped < total, f"stopped at {stopped} of {total}"
    assert ranks[1]["iteration"] == stopped
    assert_states_equal(ranks[0], ranks[1])
    assert torch.load(tmp_path / "last.pt", weights_only=True)["iteration"] == stopped
    assert not (tmp_path / "final.json").exists()
    _join(_spawn(cfg, tmp_path, resume=True))  # and the stopped run resumes to the uninterrupted result
    assert_states_equal(reference, final_state(tmp_path))


def _rank_pids(parent: int, rank: int) -> list[int]:
    """Worker processes of a torchrun agent with the given RANK (read from /proc: Linux only)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker to kill through /proc")
def test_torchrun_restarts_a_killed_worker_from_last_pt(tmp_path, reference):
    sets = [s for s in TINY if not s.startswith(tuple(LONG))] + [f"{k}={v}" for k, v in LONG.items()]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--max-restarts",
        "1",
        "--monitor-interval",
        "0.1",
        "-m",
        "udaseg.train",
        "--out",
        str(tmp_path),
        "--method",
        "self_training",
    ]
    cmd += [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # Its own process group: on a failure or time-out the agent and every worker it started are killed together
    # (killing the agent alone leaves its workers running, holding the test's output pipe).
    agent = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        _wait_for_rows(tmp_path, 7, lambda: agent.poll() is None, timeout=90)  # past the checkpoint at 6
        (victim,) = _rank_pids(agent.pid, rank=1)
        os.kill(victim, signal.SIGKILL)
        output, _ = agent.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
    assert agent.returncode == 0, output[-20000:]
    assert "resumed" in output, output[-3000:]  # the restarted group continued from last.pt, not from scratch
    assert json.loads((tmp_path / "final.json").read_text())["iterations"] == 32
    assert_states_equal(reference, final_state(tmp_path))
