"""benchmarks/profile_model.py on CPU: the whole step against the encoder alone, and the top operators."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "profile_model.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_profiles_a_model_and_writes_the_tables(tmp_path):
    done = _run(
        "--models",
        "compact",
        "--crop",
        "32",
        "64",
        "--batch",
        "1",
        "--iters",
        "2",
        "--warmup",
        "0",
        "--top",
        "4",
        "--results",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "profile-cpu.json").read_text())
    (row,) = result["rows"]
    assert row["model"] == "compact" and 0 < row["encoder_ms"] and 0 < row["whole_ms"]
    assert abs(row["decoder_and_loss_ms"] - (row["whole_ms"] - row["encoder_ms"])) < 1e-9
    assert 1 <= len(row["top"]) <= 4
    shares = [t["share"] for t in row["top"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    assert all(t["op"] and t["self_ms"] > 0 and t["calls"] >= 1 for t in row["top"]), row["top"]
    text = (tmp_path / "profile-cpu.md").read_text()
    assert "| compact |" in text and "Top operators of one compact step" in text


def test_unknown_model_is_one_line_naming_the_flag(tmp_path):
    done = _run("--models", "resnet9000", "--results", str(tmp_path))
    assert done.returncode == 2
    assert "--models" in done.stderr and "resnet9000" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())
