"""benchmarks/bench_synthetic.py's row names (METHOD@4x, @MODEL, @photometric) and whose baseline each is measured
against in the table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_synthetic as B  # noqa: E402


@pytest.mark.parametrize(
    "row,method,photometric,model,factor",
    [
        ("dida", "dida", False, None, 1),
        ("dida+cpsl@4x", "dida+cpsl", False, None, 4),
        ("self_training@segformer_mitb0", "self_training", False, "segformer_mitb0", 1),
        ("self_training@photometric", "self_training", True, None, 1),
        ("source_only@photometric@4x", "source_only", True, None, 4),
    ],
)
def test_row_names(row, method, photometric, model, factor):
    rest, aug = B.row_augment(row)
    assert aug is photometric
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
