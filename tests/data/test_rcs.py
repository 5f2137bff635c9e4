"""Rare-class sampling: statistics caching and the sampling distribution."""

import json

import numpy as np
import pytest
from data_fixtures import make_gta5, save_png

from udaseg.data import build_dataset
from udaseg.data.rcs import class_stats, rcs_probabilities, stats_path


@pytest.fixture
def gta(tmp_path):
    root = tmp_path / "gta"
    make_gta5(root, n=4)
    for i, cls_id in enumerate((7, 7, 26, 33)):  # road, road, car, bicycle (Cityscapes ids)
        lbl = np.full((12, 20), 7)
        lbl[:4, :5] = cls_id if cls_id != 7 else 8
        save_png(root / "labels" / f"{i:05d}.png", lbl)
    return build_dataset(f"gta5:{root}", role="source")


def test_stats_counts_and_cache_in_run_folder(gta, tmp_path, monkeypatch):
    run = tmp_path / "run"
    counts = class_stats(gta, run)
    assert counts.shape == (4, 19) and counts.dtype == np.int64 and counts.sum(1).tolist() == [240] * 4
    assert counts[0, 0] == 220 and counts[0, 1] == 20 and counts[2, 13] == 20
    path = stats_path(gta, run)
    assert path.parent == run and path.exists()
    assert not list((tmp_path / "gta").rglob("*.json"))  # nothing written into the dataset folder
    data = json.loads(path.read_text())
    assert data["key"]["name"] == "gta5" and data["key"]["len"] == 4 and data["pixels"] == [240] * 4

    def boom(i):
        raise AssertionError("labels re-read although cached")

    monkeypatch.setattr(gta, "load_label", boom)
    np.testing.assert_array_equal(class_stats(gta, run), counts)


def test_stats_key_depends_on_dataset(gta, tmp_path):
    other = build_dataset(f"gta5:{gta.root}", split="all")
    assert stats_path(gta, tmp_path) != stats_path(other, tmp_path)


def test_daformer_probabilities():
    counts = np.array([[900, 90, 10, 0]])
    p = rcs_probabilities(counts, temperature=0.01)
    f = np.array([0.9, 0.09, 0.01])
    expected = np.exp((1 - f) / 0.01) / np.exp((1 - f) / 0.01).sum()
    np.testing.assert_allclose(p[:3], expected, rtol=1e-9)
    assert p[3] == 0.0
