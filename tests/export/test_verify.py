"""export/verify.py: every precision meets its goal on the synthetic target domain; mismatches are refused."""

from __future__ import annotations

import json

import pytest

from udaseg.export.onnx_utils import ExportError
from udaseg.export.verify import GOALS, format_report, main, verify


def test_every_precision_meets_its_goal(checkpoint, precision_onnx, dataset_spec):
    spec, options = dataset_spec
    report = verify(checkpoint, list(precision_onnx.values()), spec, dataset_options=options)
    rows = {r["precision"]: r for r in report["graphs"]}
    print(format_report(report))
    assert report["images"] == options["count"] and set(rows) == {"fp32", "fp16", "int8"}
    assert rows["fp32"]["max_logit_diff"] < 1e-4
    assert rows["fp32"]["pixel_agreement"] >= GOALS["fp32"]["min_agreement"]  # >= 99.9 %
    assert rows["fp16"]["max_logit_diff"] < 0.05
    assert rows["int8"]["miou_drop"] <= GOALS["int8"]["max_miou_drop"]  # within 1 point of fp32
    assert rows["fp32"]["miou_pytorch"] > 10  # trained (a random model scores < 1): the goals mean something
    assert all(r["passed"] for r in report["graphs"]), format_report(report)


def test_cli_writes_report(checkpoint, precision_onnx, dataset_spec, tmp_path, monkeypatch, capsys):
    """main() on the fp32 graph; the synthetic options come through the dataset spec's cache (already generated)."""
    import udaseg.export.samples as samples

    spec, options = dataset_spec
    build = samples.open_dataset
    monkeypatch.setattr(samples, "open_dataset", lambda s, **kw: build(s, **{**kw, **options}))
    out = tmp_path / "verify.json"
    code = main(
        [
            "--checkpoint",
            str(checkpoint),
            "--onnx",
            str(precision_onnx["fp32"]),
            "--dataset",
            spec,
            "--limit",
            "2",
            "--output",
            str(out),
        ]
    )
    assert code == 0 and json.loads(out.read_text())["images"] == 2
    assert "| model_fp32.onnx | fp32 |" in capsys.readouterr().out


def test_checkpoint_of_another_architecture_or_class_count(checkpoint, precision_onnx, dataset_spec, tmp_path):
    from udaseg.checkpoint import load_checkpoint, save_checkpoint
    from udaseg.models import build_model

    spec, options = dataset_spec
    payload = load_checkpoint(checkpoint)
    payload["model_spec"] = {"name": "compact", "num_classes": 16, "kwargs": {}}
    payload["model"] = build_model("compact", num_classes=16).state_dict()
    save_checkpoint(tmp_path / "c16.pt", payload)
    with pytest.raises(ExportError, match="not exported from this checkpoint: classes: ONNX 19, checkpoint 16"):
        verify(tmp_path / "c16.pt", [precision_onnx["fp32"]], spec, dataset_options=options)
    payload["model_spec"] = {"name": "compact", "num_classes": 19, "kwargs": {"width": 16}}
    payload["model"] = build_model("compact", num_classes=19, width=16).state_dict()
    save_checkpoint(tmp_path / "narrow.pt", payload)
    with pytest.raises(ExportError, match=r"architecture: ONNX compact\(\), checkpoint compact\(width=16\)"):
        verify(tmp_path / "narrow.pt", [precision_onnx["fp32"]], spec, dataset_options=options)
