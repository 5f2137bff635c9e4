"""Rare-class sampling (DAFormer, Hoyer et al. 2022, `mmseg/datasets/uda_dataset.py`).

Class pixel counts per source image are computed once (labels only, no DataLoader, threads for decoding) and
cached as JSON in the run folder, never inside the dataset folder. Training draws a class c with probability
P(c) = softmax((1 - f_c) / T) over the classes present (f_c: the class's share of all labelled pixels, T = 0.01),
then an image that holds more than `min_pixels` pixels of c, and re-crops up to 10 times until the crop shows
that class (`udaseg.engine.data.StepSampler` / `TrainView`, deterministic per iteration so that resume is exact).

DAFormer's `min_pixels = 3000` is for full-size GTA5 labels (1914x1052, 0.15 % of the image); the default here is
the same fraction of each dataset's mean image size, so it also suits the 128x256 synthetic benchmark.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from udaseg.fileio import write_json

MIN_PIXEL_FRACTION = 3000 / (1914 * 1052)


def _key(dataset) -> dict:
    return {
        "name": dataset.name,
        "root": os.path.abspath(dataset.root),
        "split": dataset.split,
        "len": len(dataset),
        "num_classes": dataset.num_classes,
    }


def stats_path(dataset, cache_dir: str | Path) -> Path:
    """Cache file for a dataset: `cache_dir/rcs_stats_<name>_<hash of name, root, split, len>.json`."""
    digest = hashlib.sha1(json.dumps(_key(dataset), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"rcs_stats_{dataset.name}_{digest}.json"


def compute_counts(dataset, workers: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """((N, C) class counts, (N,) pixels) from the labels alone: one vectorised bincount per label."""
    c = dataset.num_classes

    def one(i: int) -> np.ndarray:
        label = dataset.load_label(i)  # (H, W) uint8 train ids
        return np.bincount(label.ravel(), minlength=256)

    with ThreadPoolExecutor(max(1, workers)) as pool:  # PNG decoding releases the GIL
        hist = np.stack(list(pool.map(one, range(len(dataset))))) if len(dataset) else np.zeros((0, 256), int)
    return hist[:, :c].astype(np.int64), hist.sum(axis=1).astype(np.int64)


def class_stats(
    dataset, cache_dir: str | Path, workers: int = 8, counts: np.ndarray | None = None, pixels: np.ndarray | None = None
) -> np.ndarray:
    """(N, C) int64 class pixel counts per image of `dataset`, read from `cache_dir` (the run folder) when they
    were already computed for the same dataset (name, root, split, length), else computed and cached there.

    `counts`/`pixels`: (N, C) / (N,) already at hand (the run-input check's `DataReport.counts`/`.pixels`), so
    the labels are not decoded a second time; they are cached like computed ones.
    """
    path = stats_path(dataset, cache_dir)
    key = _key(dataset)
    try:
        cached = json.loads(path.read_text())
        if cached["key"] == key:
            return np.asarray(cached["counts"], dtype=np.int64).reshape(len(dataset), dataset.num_classes)
    except (OSError, ValueError, KeyError):
        pass
    if counts is None or pixels is None:
        counts, pixels = compute_counts(dataset, workers)
    counts = np.asarray(counts, dtype=np.int64).reshape(len(dataset), dataset.num_classes)
    # atomic (concurrent ranks write identical content)
    write_json(
        path,
        {
            "key": key,
            "classes": list(dataset.class_names),
            "counts": counts.tolist(),
            "pixels": np.asarray(pixels).tolist(),
        },
        indent=None,
    )
    return counts


def rcs_probabilities(counts: np.ndarray, temperature: float = 0.01) -> np.ndarray:
    """(C,) DAFormer class probabilities: softmax((1 - f_c) / T) over classes present, 0 for absent classes."""
    total = counts.sum(axis=0).astype(np.float64)  # (C,)
    present = total > 0
    freq = total / max(total.sum(), 1.0)
    logits = np.where(present, (1.0 - freq) / temperature, -np.inf)
    logits -= logits[present].max() if present.any() else 0.0
    probs = np.exp(logits)
    return probs / probs.sum() if present.any() else probs
