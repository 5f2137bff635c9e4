"""The training loop end to end at tiny size: CLI, run folder, resume exactness, two-process DDP, bad input."""

import json
import math

import pytest
import torch

from tests.helpers import assert_states_equal, check_resume_exact, run_ddp, tiny_config
from udaseg.train import main, train


def test_end_to_end_run_folder(tmp_path):
    result = train(tiny_config("self_training"), tmp_path)
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "final.pt", "final.json", "curves.png", "samples.png"):
        assert (tmp_path / name).is_file(), name
    final = json.loads((tmp_path / "final.json").read_text())
    assert final == json.loads(json.dumps(result))
    assert 0 <= final["miou"] <= 100 and final["protocol"] == 19 and len(final["per_class"]) == 19
    assert final["before"] is not None and "miou" in final["before"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["stage"] == "eval"]
    rows = [r for r in rows if r["stage"] in ("warmup", "adapt")]  # training rows (not eval, pseudo, select, ...)
    assert [r["iter"] for r in rows] == [1, 2, 3, 4, 5]
    assert [(r["iter"], r["miou"]) for r in evals] == [(2, final["before"]["miou"]), (5, final["miou"])]
    adapt = [r for r in rows if r["stage"] == "adapt"]
    assert all("self_training/pseudo_ce" in r and math.isfinite(r["self_training/pseudo_ce"]) for r in adapt)
    assert all("self_training/pseudo_ce" not in r for r in rows if r["stage"] == "warmup")
    assert all(math.isfinite(r["source_ce"]) and "total" in r for r in rows)  # the loop's own terms: no prefix


def test_cli_defaults_and_overrides(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--method", "source_only", "--iters", "1", "--warmup-iters", "1"]
    args += [x for s in tiny_overrides() for x in ("--set", s)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "before: source_only warm-up" in out and "after: source_only" in out
    assert "method: source_only" in (tmp_path / "config.yaml").read_text()


def tiny_overrides():
    from tests.helpers import TINY

    return [s for s in TINY if not s.startswith(("train.iters", "train.warmup_iters"))]


def test_cli_bad_config_is_a_clear_error(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--set", "train.itres=3"]) == 2
    assert "unknown key(s) ['itres']" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--method", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_resume_is_exact(tmp_path):
    check_resume_exact(tiny_config("self_training"), tmp_path, stop_after=3)  # stops inside the adaptation stage


def test_non_finite_loss_skips_the_step(tmp_path, monkeypatch):
    import udaseg.train as T

    real = T.train_step
    calls = {"n": 0}

    def poisoned(step, methods, *rest):
        losses = real(step, methods, *rest)
        calls["n"] += 1
        if calls["n"] == 2:
            losses["source_ce"] = losses["source_ce"] * float("nan")
        return losses

    monkeypatch.setattr(T, "train_step", poisoned)
    cfg = tiny_config("source_only", **{"train.warmup_iters": 0})
    held: dict = {}
    train(cfg, tmp_path, state_out=held)
    assert all(torch.isfinite(v).all() for v in held["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_two_process_ddp_ranks_agree(tmp_path):
    states = run_ddp(tiny_config("self_training"), tmp_path)
    assert_states_equal(states[0], states[1])
    assert (tmp_path / "final.json").is_file()


def test_init_from_a_warmup_checkpoint(tmp_path, capsys):
    train(tiny_config("source_only", **{"train.warmup_iters": 0, "train.iters": 2}), tmp_path / "warm")
    cfg = tiny_config("self_training", **{"train.warmup_iters": 0, "train.init": str(tmp_path / "warm" / "final.pt")})
    result = train(cfg, tmp_path / "adapt")
    warm = json.loads((tmp_path / "warm" / "final.json").read_text())
    assert result["before"]["miou"] == pytest.approx(warm["miou"])  # "before" is the warm-up model, evaluated
    assert "before: from final.pt" in capsys.readouterr().out
