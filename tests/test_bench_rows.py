"""benchmarks/bench_synthetic.py's row names (METHOD@4x, @MODEL, @photometric, @naive) and whose baseline each is
measured against in the table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_synthetic as B  # noqa: E402


@pytest.mark.parametrize(
    "row,method,variants,model,factor",
    [
        ("dida", "dida", [], None, 1),
        ("dida+cpsl@4x", "dida+cpsl", [], None, 4),
        ("self_training@segformer_mitb0", "self_training", [], "segformer_mitb0", 1),
        ("self_training@photometric", "self_training", ["photometric"], None, 1),
        ("source_only@photometric@4x", "source_only", ["photometric"], None, 4),
        ("self_training@naive@rollback", "self_training", ["naive", "rollback"], None, 1),
    ],
)
def test_row_names(row, method, variants, model, factor):
    rest, found = B.row_variants(row)
    assert found == variants
    rest, got_model = B.row_model(rest)
    assert got_model == model
    name, sched, base = B.row_schedule(rest, (600, 600), Path("runs"))
    assert (name, sched) == (method, (600 * factor, 600 * factor))
    assert base == (Path("runs") / f"x{factor}" if factor > 1 else Path("runs"))


def _row(miou: float) -> dict:
    return {"miou": miou, "miou_std": 0.0, "seeds": [0], "rare_iou": {}, "wall_time_s": 1.0, "peak_memory_mb": 1.0}


def test_photometric_rows_close_the_plain_gap():
    rows = {
        "source_only": _row(20.0),
        "oracle": _row(60.0),
        "self_training": _row(40.0),
        "source_only@photometric": _row(30.0),
        "self_training@photometric": _row(50.0),
    }
    table = B.markdown(B.order_rows(rows), {"device": "cpu", "schedule": "test"}, [])
    closure = {line.split("|")[1].strip(): line.split("|")[5].strip() for line in table.splitlines()[4:] if "|" in line}
    assert closure["self_training"] == "50 %"
    assert closure["source_only@photometric"] == "25 %", "the randomisation alone, against the plain source_only"
    assert closure["self_training@photometric"] == "75 %"
    assert closure["source_only"] == "—" and closure["oracle"] == "—"


def test_adaptation_only_variants_share_the_plain_warm_up(monkeypatch):
    """@naive / @rollback change the adaptation run only: the plain warm-up folder is reused, the overrides reach the
    adaptation run alone and its folder is named after them; @photometric changes both, in a folder of its own."""
    calls = []

    def fake_run(out, args):
        calls.append((out, args))
        return {"wall_time_s": 1.0}

    monkeypatch.setattr(B, "train_run", fake_run)
    B.run_row("self_training@naive@rollback", 0, Path("runs"), [], (600, 600), select_every=100)
    (warm, warm_args), (adapt, adapt_args) = calls
    assert warm == Path("runs/warmup-s0") and adapt == Path("runs/self_training-naive-rollback-s0")
    assert not any(s in warm_args for s in (*B.NAIVE, "monitor.on_collapse=rollback"))
    assert all(s in adapt_args for s in (*B.NAIVE, "monitor.on_collapse=rollback", "train.eval_every=100"))
    calls.clear()
    B.run_row("self_training@photometric", 1, Path("runs"), [], (600, 600))
    (warm, warm_args), (adapt, adapt_args) = calls
    assert warm == Path("runs/photometric/warmup-s1") and adapt == Path("runs/photometric/self_training-s1")
    assert all(s in warm_args and s in adapt_args for s in B.PHOTOMETRIC)


def test_variant_rows_close_the_plain_gap():
    rows = {"source_only": _row(20.0), "oracle": _row(60.0), "self_training@naive": _row(10.0)}
    table = B.markdown(B.order_rows(rows), {"device": "cpu", "schedule": "test"}, [])
    closure = {line.split("|")[1].strip(): line.split("|")[5].strip() for line in table.splitlines()[4:] if "|" in line}
    assert closure["self_training@naive"] == "-25 %"


def test_selection_table_leads_with_the_current_default_criterion():
    """Runs log every criterion, so the table's main column is what today's default keeps, whatever the runs used."""
    from udaseg.config import MonitorConfig

    default = MonitorConfig().criterion
    picks = {c: 30.0 + i for i, c in enumerate(B.CRITERIA)}
    gaps = {c: 5.0 - i for i, c in enumerate(B.CRITERIA)}
    sel = {
        "criterion": "snd",
        "selected": picks["snd"],
        "max_gap": gaps["snd"],
        "first": 20.0,
        "best": 35.0,
        "last": 34.0,
        "warnings": 0,
        "by_criterion": picks,
        "max_gap_by_criterion": gaps,
    }
    table = B.selection_markdown({"dida": {**_row(34.0), "selection": sel}})
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert header.split("|")[3].strip() == f"selected ({default})"
    row = next(line for line in table.splitlines() if line.startswith("| dida"))
    cells = [c.strip() for c in row.split("|")]
    assert (cells[3], cells[6]) == (f"{picks[default]:.2f}", f"{gaps[default]:.2f}")


def test_selection_keeps_each_seeds_trace_and_warnings(tmp_path):
    """The result file carries every evaluation's mIoU and scores per seed, so a figure quoted from a trace (where a
    criterion peaked, when the guard warned) comes from the committed file, not from a run folder."""
    import json

    rows = [
        {"iter": 0, "stage": "select", "miou": 20.0, "agreement": 0.3, "im": 0.5, "snd": 0.6, "entropy": -0.3},
        {"iter": 100, "stage": "warning", "kind": "diversity"},
        {"iter": 100, "stage": "select", "miou": 10.0, "agreement": 0.1, "im": 0.2, "snd": 0.9, "entropy": -0.1},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    sel = B.selection(tmp_path)
    assert sel["by_criterion"] == {"agreement": 20.0, "im": 20.0, "snd": 10.0, "entropy": 10.0}
    agg = B.aggregate_selection([sel, sel])
    assert agg["per_seed"][1]["warnings"] == ["diversity@100"]
    assert [(t["iter"], t["miou"], t["snd"]) for t in agg["per_seed"][0]["trace"]] == [(0, 20.0, 0.6), (100, 10.0, 0.9)]
