"""Rare-class sampling: statistics caching and the sampling distribution."""

import json

import numpy as np
import pytest
import torch
from data_fixtures import make_gta5, save_png

from udaseg.data import build_dataset
from udaseg.data.rcs import RareClassSampler, class_stats, rcs_probabilities, stats_path


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


def test_sampler_distribution_and_determinism():
    counts = np.zeros((6, 3), dtype=np.int64)
    counts[:, 0] = 1000  # common class in every image
    counts[4, 1] = 50  # rarer class in image 4
    counts[5, 2] = 10  # rarest class in image 5
    sampler = RareClassSampler(counts, num_samples=4000, temperature=0.5, min_pixels=5, seed=1, with_class=False)
    draws = np.array(list(sampler))
    p = sampler.probs
    assert p[2] > p[1] > p[0]
    share5 = (draws == 5).mean()
    share4 = (draws == 4).mean()
    assert abs(share5 - p[2] - p[0] / 6) < 0.03 and abs(share4 - p[1] - p[0] / 6) < 0.03
    assert draws.tolist() == list(sampler)  # same seed and epoch: same stream
    sampler.set_epoch(1)
    assert draws.tolist() != list(sampler)


def test_sampler_ranks_and_min_pixels():
    counts = np.array([[100, 3], [100, 40], [100, 0]])
    s0 = RareClassSampler(counts, num_samples=50, temperature=1.0, min_pixels=10, rank=0, world_size=2)
    s1 = RareClassSampler(counts, num_samples=50, temperature=1.0, min_pixels=10, rank=1, world_size=2)
    a, b = list(s0), list(s1)
    assert a != b and len(a) == len(s0) == 50
    assert all(i == 1 for i, c, _ in a + b if c == 1)  # image 0 has too few pixels of class 1
    assert s0.min_crop_pixels == 5


def test_dataset_accepts_sampler_tuples(gta, tmp_path):
    ds = build_dataset(f"gta5:{gta.root}", crop_size=8)
    sampler = RareClassSampler(class_stats(ds, tmp_path), num_samples=8, min_pixels=1)
    loader = torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=4)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 8, 8) and batch["label"].shape == (4, 8, 8)
    torch.manual_seed(0)
    hits = sum(int((ds[(2, 13, 4)]["label"] == 13).sum() >= 4) for _ in range(10))  # image 2, car, >= 4 px
    misses = sum(int((ds[2]["label"] == 13).sum() >= 4) for _ in range(10))
    assert hits >= 8 and hits > misses
