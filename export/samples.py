"""Images for calibration, verification and benchmarks: raw uint8 frames from a dataset spec ``NAME[:ROOT]``.

Deployment sees camera frames (uint8 RGB), so every export stage starts from the dataset's uint8 files and applies
export/prepost.py itself, never the training transforms.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("udaseg.export")


@dataclass
class Sample:
    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: np.ndarray  # (H, W) uint8 train ids, 255 = ignore


def open_dataset(spec: str, split: str = "val", role: str = "target", **options):
    """``udaseg.data.build_dataset`` (whole images, no augmentation) for a ``NAME[:ROOT]`` spec."""
    from udaseg.data import build_dataset

    return build_dataset(spec, split=split, role=role, **options)


def iter_samples(dataset, limit: int | None = None) -> Iterator[Sample]:
    """Up to ``limit`` samples spread evenly over ``dataset`` (all when None), as uint8 arrays."""
    n = len(dataset)
    if n == 0:
        raise ValueError(f"dataset {getattr(dataset, 'name', dataset)!r} is empty")
    count = n if limit is None else min(limit, n)
    for i in np.linspace(0, n - 1, count).round().astype(int):
        if hasattr(dataset, "load"):  # SegDataset: the files as stored
            image, label = dataset.load(int(i))
            name = str(dataset.files[int(i)][0])
        else:  # any dataset following the item contract: {"image": (3, H, W) float [0, 1], "label": (H, W)}
            item = dataset[int(i)]
            image = (item["image"].permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
            label = item["label"].numpy().astype(np.uint8)
            name = str(item.get("name", i))
        yield Sample(name=name, image=np.ascontiguousarray(image), label=label)


def load_samples(spec: str, split: str, limit: int | None, role: str = "target", **options) -> list[Sample]:
    """``iter_samples(open_dataset(...))`` as a list, logging where the images came from."""
    dataset = open_dataset(spec, split=split, role=role, **options)
    samples = list(iter_samples(dataset, limit))
    log.info("%d %s images from %s (%s split)", len(samples), role, spec, split)
    return samples
