"""Rare-class sampling (DAFormer, Hoyer et al. 2022, `mmseg/datasets/uda_dataset.py`).

Class pixel counts per source image are computed once (labels only, no DataLoader, threads for decoding) and
cached as JSON in the run folder, never inside the dataset folder. The sampler draws a class c with probability
P(c) = softmax((1 - f_c) / T) over the classes present (f_c: the class's share of all labelled pixels, T = 0.01),
then an image that holds more than `min_pixels` pixels of c. It yields `(index, c, min_crop_pixels)` so that the
dataset re-draws its random crop (up to 10 times) until the crop shows at least that many pixels of c.

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
import torch
from torch.utils.data import Sampler

MIN_PIXEL_FRACTION = 3000 / (1914 * 1052)


def _key(dataset) -> dict:
    return {"name": dataset.name, "root": os.path.abspath(dataset.root), "split": dataset.split,
            "len": len(dataset), "num_classes": dataset.num_classes}


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


def class_stats(dataset, cache_dir: str | Path, workers: int = 8) -> np.ndarray:
    """(N, C) int64 class pixel counts per image of `dataset`, read from `cache_dir` (the run folder) when they
    were already computed for the same dataset (name, root, split, length), else computed and cached there."""
    path = stats_path(dataset, cache_dir)
    key = _key(dataset)
    try:
        cached = json.loads(path.read_text())
        if cached["key"] == key:
            return np.asarray(cached["counts"], dtype=np.int64).reshape(len(dataset), dataset.num_classes)
    except (OSError, ValueError, KeyError):
        pass
    counts, pixels = compute_counts(dataset, workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "classes": list(dataset.class_names), "counts": counts.tolist(),
                               "pixels": pixels.tolist()}))
    os.replace(tmp, path)  # atomic: concurrent ranks write identical content
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


class RareClassSampler(Sampler):
    """Draw image indices by the DAFormer rare-class rule, deterministic from (seed, epoch, rank).

    Args:
        counts: (N, C) class pixel counts per image (from `class_stats`).
        num_samples: draws per epoch and rank (default: ceil(N / world_size)).
        temperature: T of the class softmax (DAFormer 0.01).
        min_pixels: an image is a candidate for class c when it has more than this many pixels of c
            (default: 0.15 % of the mean labelled pixels per image, DAFormer's 3000 px on GTA5).
        min_crop_ratio: the crop must show `min_crop_ratio * min_pixels` pixels of c (DAFormer 0.5).
        seed, rank, world_size: each rank draws its own stream; call `set_epoch` every epoch.
        with_class: yield (index, class, min_crop_pixels) tuples (SegDataset accepts them) instead of indices.
    """

    def __init__(self, counts: np.ndarray, num_samples: int | None = None, temperature: float = 0.01,
                 min_pixels: int | None = None, min_crop_ratio: float = 0.5, seed: int = 0, rank: int = 0,
                 world_size: int = 1, with_class: bool = True):
        counts = np.asarray(counts, dtype=np.int64)  # (N, C)
        pixels = counts.sum(axis=1)  # (N,)
        if len(counts) == 0:
            raise ValueError("rare-class sampling needs a non-empty dataset")
        if min_pixels is None:
            min_pixels = max(1, round(MIN_PIXEL_FRACTION * float(pixels.mean())))
        self.min_pixels, self.min_crop_pixels = int(min_pixels), max(1, round(min_pixels * min_crop_ratio))
        eligible = counts > self.min_pixels  # (N, C)
        probs = rcs_probabilities(counts, temperature) * eligible.any(axis=0)  # classes without candidates dropped
        if probs.sum() == 0:  # every image is below min_pixels for every class: fall back to uniform images
            eligible, probs = np.ones_like(eligible), np.full(counts.shape[1], 1.0 / counts.shape[1])
        self.probs = probs / probs.sum()  # (C,)
        self.candidates = [np.flatnonzero(eligible[:, c]) for c in range(counts.shape[1])]
        self._flat = torch.from_numpy(np.concatenate(self.candidates)).long()
        lens = np.array([len(c) for c in self.candidates])
        self._starts = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)[:-1]])).long()
        self._lens = torch.from_numpy(lens).long()
        self.num_samples = num_samples or -(-len(counts) // world_size)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.with_class = with_class

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def draw(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) classes and (n,) image indices."""
        classes = torch.multinomial(torch.from_numpy(self.probs), n, replacement=True, generator=gen)
        pick = (torch.rand(n, generator=gen, dtype=torch.float64) * self._lens[classes]).long()
        pick = torch.minimum(pick, self._lens[classes] - 1)
        return classes, self._flat[self._starts[classes] + pick]

    def __iter__(self):
        state = np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(2, dtype=np.uint64)
        gen = torch.Generator().manual_seed(int(state[0] % (2**63)))
        classes, indices = self.draw(self.num_samples, gen)
        if not self.with_class:
            yield from indices.tolist()
            return
        for i, c in zip(indices.tolist(), classes.tolist()):
            yield (i, c, self.min_crop_pixels)
