"""Synthetic benchmark: determinism, cache handling, class coverage and the domain differences."""

import json

import numpy as np
import pytest

from udaseg.data import build_dataset
from udaseg.data.synthetic import DOMAINS, default_cache, generate, render_scene


@pytest.fixture(scope="module")
def class_counts():
    """(domain -> (19,) pixel counts) over 60 scenes per domain (rendered in memory, no files)."""
    out = {}
    for domain in ("source", "target"):
        counts = np.zeros(256, dtype=np.int64)
        for i in range(60):
            counts += np.bincount(render_scene(0, domain, "train", i)[1].ravel(), minlength=256)
        out[domain] = counts
    return out


def test_render_deterministic_and_shapes():
    for domain in ("source", "target"):
        img, lbl = render_scene(3, domain, "train", 5)
        img2, lbl2 = render_scene(3, domain, "train", 5)
        assert img.shape == (128, 256, 3) and img.dtype == np.uint8 and lbl.shape == (128, 256)
        assert lbl.dtype == np.uint8 and lbl.max() < 19
        assert np.array_equal(img, img2) and np.array_equal(lbl, lbl2)
    assert not np.array_equal(render_scene(3, "target", "train", 5)[1], render_scene(4, "target", "train", 5)[1])
    assert not np.array_equal(render_scene(3, "target", "train", 5)[1], render_scene(3, "target", "val", 5)[1])
    assert render_scene(0, "source", "train", 0, size=(64, 96))[0].shape == (64, 96, 3)


def test_all_classes_in_both_domains(class_counts):
    for domain, counts in class_counts.items():
        missing = [c for c in range(19) if counts[c] == 0]
        assert not missing, f"{domain}: classes {missing} never drawn"
        assert counts[19:].sum() == 0


def test_domains_differ_in_class_statistics(class_counts):
    src, tgt = (class_counts[d][:19] / class_counts[d][:19].sum() for d in ("source", "target"))
    assert tgt[11] > 1.5 * src[11]  # more persons
    assert tgt[14] < 0.6 * src[14]  # fewer trucks


def test_domains_differ_in_appearance():
    src = np.stack([render_scene(0, "source", "train", i)[0] for i in range(4)]).astype(float)
    tgt = np.stack([render_scene(0, "target", "train", i)[0] for i in range(4)]).astype(float)
    # high-frequency energy (texture + sensor noise) is much larger in the target domain
    assert np.abs(np.diff(tgt, axis=2)).mean() > 1.5 * np.abs(np.diff(src, axis=2)).mean()


def test_generate_same_bytes_and_cache(tmp_path):
    a = generate(tmp_path / "a", "target", "val", count=4, workers=1)
    b = generate(tmp_path / "b", "target", "val", count=4, workers=2)
    for sub in ("images", "labels"):
        for i in range(4):
            assert (a / sub / f"{i:05d}.png").read_bytes() == (b / sub / f"{i:05d}.png").read_bytes()
    meta = json.loads((a / "meta.json").read_text())
    assert meta["count"] == 4 and meta["size"] == [128, 256] and meta["seed"] == 0 and meta["version"] >= 1
    stamp = (a / "images" / "00000.png").stat().st_mtime_ns
    generate(tmp_path / "a", "target", "val", count=4)
    assert (a / "images" / "00000.png").stat().st_mtime_ns == stamp  # cache hit: nothing rewritten
    five = generate(tmp_path / "a", "target", "val", count=5)
    assert five != a and (five / "images" / "00004.png").exists() and (a / "meta.json").exists()  # one per setting
    (a / "meta.json").write_text(json.dumps({**meta, "version": -1}))  # stale cache (an older generator version)
    generate(tmp_path / "a", "target", "val", count=4)
    assert json.loads((a / "meta.json").read_text())["version"] == meta["version"]
    assert (a / "images" / "00000.png").read_bytes() == (b / "images" / "00000.png").read_bytes()
    assert not [p for p in (tmp_path / "a" / "target").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_build_dataset_roles(tmp_path):
    src = build_dataset(f"synthetic:{tmp_path}", role="source", count=3)
    tgt = build_dataset(f"synthetic:{tmp_path}", role="target", count=3)
    explicit = build_dataset(f"synthetic_source:{tmp_path}", role="target", count=3)
    assert src.name == explicit.name == "synthetic_source" and tgt.name == "synthetic_target"
    item = src[0]
    assert item["image"].shape == (3, 128, 256) and item["label"].shape == (128, 256)
    assert tgt[0]["image"].shape == (3, 128, 256)
    assert (tmp_path / "source" / "train-128x256-n3-seed0" / "meta.json").exists()
    val = build_dataset(f"synthetic:{tmp_path}", split="val", count={"train": 3, "val": 2})
    assert len(val) == 2
    with pytest.raises(ValueError, match="split 'test'"):
        build_dataset(f"synthetic:{tmp_path}", split="test")


def test_default_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv("UDASEG_CACHE", str(tmp_path))
    assert default_cache() == tmp_path / "synthetic"
    monkeypatch.delenv("UDASEG_CACHE")
    assert default_cache().parts[-3:] == (".cache", "udaseg", "synthetic")


def test_domain_definitions_documented():
    assert set(DOMAINS) == {"source", "target"}
    assert DOMAINS["target"].style.noise > DOMAINS["source"].style.noise
