"""`SegDataset`: a list of (image, label) files, a label reader, a lookup table, and the train-time crop.

Every loader (GTA5, SYNTHIA, Cityscapes, folder, synthetic) is a function that finds the files and returns a
`SegDataset`; the class itself knows nothing about formats. It is a plain picklable object (paths, a numpy LUT,
a module-level reader function), so DataLoader workers get a copy.

Randomness: each process (main or worker) owns a `torch.Generator` seeded from `torch.initial_seed()` (which the
DataLoader sets per worker from its own generator) and the dataset's `seed`, so crops are reproducible given the
loader's seed and differ between epochs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from udaseg.data import transforms as T
from udaseg.data.io import DatasetError, image_size, read_image, read_label
from udaseg.data.labels import CLASS_NAMES, IGNORE_INDEX, apply_lut

LabelReader = Callable[[str], np.ndarray]


class DatasetWarning(UserWarning):
    """Something in a dataset folder was skipped (e.g. an image without a label)."""


class LabelWarning(DatasetWarning):
    """Label files hold values the dataset format does not define (they are ignored)."""


@dataclass
class Augment:
    """Train-time geometry applied in `SegDataset.get` (all off by default: evaluation sees whole images).

    resize: (h, w) every pair is resized to first (bilinear image, nearest label), e.g. GTA5 -> (720, 1280).
    crop_size: (h, w) random crop; pads with 0 / IGNORE_INDEX when the image is smaller.
    scale_range: (low, high) random rescale factor before the crop (needs crop_size).
    flip: random horizontal flip with probability 0.5.
    cat_max_ratio: retry crops where one class covers more than this fraction (mmseg; DAFormer uses 0.75).
    """

    resize: tuple[int, int] | None = None
    crop_size: tuple[int, int] | None = None
    scale_range: tuple[float, float] | None = None
    flip: bool = False
    cat_max_ratio: float | None = None


class SegDataset(Dataset):
    """Image/label pairs mapped to train ids. Items: {"image": (3, H, W) float32 in [0, 1], "label": (H, W) int64,
    "name": str, "index": int}. An index may also be a tuple (i, class[, min_pixels]) from the rare-class
    sampler: the crop is then retried until it shows that class."""

    def __init__(self, files: Sequence[tuple[str, str | None]], *, name: str, root: str, split: str,
                 lut: np.ndarray, label_reader: LabelReader = read_label, augment: Augment | None = None,
                 class_names: Sequence[str] = CLASS_NAMES, size_mismatch: str = "error", seed: int = 0):
        if size_mismatch not in ("error", "resize"):
            raise ValueError(f"size_mismatch must be 'error' or 'resize', got {size_mismatch!r}")
        self.files = [(str(i), None if lb is None else str(lb)) for i, lb in files]
        self.name, self.root, self.split = name, str(root), split
        self.lut, self.label_reader = lut, label_reader
        self.augment = augment or Augment()
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = IGNORE_INDEX
        self.size_mismatch = size_mismatch
        self.seed = seed
        self.unknown_pixels = 0  # pixels with undefined label values seen by this process
        self._warned = False
        self._gen: torch.Generator | None = None
        self._gen_key: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"SegDataset({self.name}, split={self.split}, root={self.root}, n={len(self)}, {self.augment})"

    # ---- reading -------------------------------------------------------------------------------------------
    def load_label(self, i: int) -> np.ndarray:
        """(H, W) uint8 train ids of item i at file resolution (all IGNORE_INDEX when the item has no label)."""
        img_path, lbl_path = self.files[i]
        if lbl_path is None:
            h, w = image_size(img_path)
            return np.full((h, w), IGNORE_INDEX, dtype=np.uint8)
        raw = self.label_reader(lbl_path)
        label, n_unknown, values = apply_lut(raw, self.lut)
        if n_unknown:
            self._report_unknown(lbl_path, n_unknown, values)
        return label

    def _report_unknown(self, path: str, n: int, values: list[int]) -> None:
        self.unknown_pixels += n
        if self._warned:
            return
        self._warned = True
        known = np.flatnonzero(self.lut >= 0)
        warnings.warn(f"{path}: {n} pixels with label values {values} that dataset '{self.name}' does not define "
                      f"(expected values in {known.min()}..{known.max()}) were set to ignore ({IGNORE_INDEX}). "
                      f"Further ones are counted in dataset.unknown_pixels without more warnings.",
                      LabelWarning, stacklevel=3)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """((H, W, 3) uint8 image, (H, W) uint8 train ids) of item i, sizes checked."""
        img_path, lbl_path = self.files[i]
        image = read_image(img_path)
        label = self.load_label(i)
        if image.shape[:2] != label.shape:
            if self.size_mismatch == "error":
                raise DatasetError(
                    f"image/label size mismatch in dataset '{self.name}': {img_path} is {image.shape[1]}x"
                    f"{image.shape[0]} (WxH) but {lbl_path} is {label.shape[1]}x{label.shape[0]}; expected equal "
                    f"sizes. Fix the files, or pass size_mismatch='resize' to resize labels to their image.")
            label = T.resize_label(torch.from_numpy(label), image.shape[:2]).numpy()
        return image, label

    def validate(self, limit: int | None = None) -> None:
        """Check every pair from the file headers only (sizes, readability) and raise one DatasetError listing
        the problems. Cheap enough to run before a long training run."""
        problems = []
        for img_path, lbl_path in self.files[:limit]:
            try:
                size = image_size(img_path)
                if lbl_path is not None and image_size(lbl_path) != size and self.size_mismatch == "error":
                    problems.append(f"{img_path} {size} vs {lbl_path} {image_size(lbl_path)} (HxW)")
            except DatasetError as err:
                problems.append(str(err))
        if problems:
            head = "\n  ".join(problems[:10])
            more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise DatasetError(f"dataset '{self.name}' ({self.root}): {len(problems)} bad pairs:\n  {head}{more}")

    # ---- items ---------------------------------------------------------------------------------------------
    def generator(self) -> torch.Generator:
        """This process's generator (re-seeded when the process or its torch seed changes, e.g. a new worker)."""
        key = (os.getpid(), torch.initial_seed())
        if self._gen is None or self._gen_key != key:
            self._gen = torch.Generator().manual_seed((key[1] * 1_000_003 + self.seed) % (2**63))
            self._gen_key = key
        return self._gen

    def get(self, i: int, gen: torch.Generator | None = None,
            must_contain: tuple[int, int] | None = None) -> dict:
        """Item i with the dataset's augmentation drawn from `gen` (default: this process's generator)."""
        gen = gen or self.generator()
        image, label = self.load(i)
        img = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        lbl = torch.from_numpy(label).long()  # (H, W)
        img, lbl = augment_pair(img, lbl, self.augment, gen, must_contain)
        return {"image": img.contiguous(), "label": lbl.contiguous(), "name": Path(self.files[i][0]).name,
                "index": i}

    def __getitem__(self, index: int | tuple[int, ...]) -> dict:
        if isinstance(index, tuple | list):
            i, cls = int(index[0]), int(index[1])
            min_pixels = int(index[2]) if len(index) > 2 else 1
            return self.get(i, must_contain=(cls, max(1, min_pixels)))
        return self.get(int(index))


def augment_pair(img: torch.Tensor, lbl: torch.Tensor, aug: Augment, gen: torch.Generator,
                 must_contain: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize, random scale + crop, flip of an image (3, H, W) and its label (H, W)."""
    if aug.resize is not None:
        img, lbl = T.resize(img, aug.resize), T.resize_label(lbl, aug.resize)
    if aug.crop_size is not None:
        img, lbl = T.random_scale_crop(img, lbl, aug.crop_size, aug.scale_range, gen,
                                       cat_max_ratio=aug.cat_max_ratio, must_contain=must_contain)
    elif aug.scale_range is not None:
        raise ValueError("scale_range needs crop_size (a random rescale without a crop changes the batch shape)")
    if aug.flip and bool(torch.rand(1, generator=gen) < 0.5):
        img, lbl = T.hflip(img), T.hflip(lbl)
    return img, lbl


def layout_error(name: str, root: str | Path, expected: str, found: str) -> DatasetError:
    """A DatasetError for a missing/misnamed/empty dataset folder that shows the expected tree."""
    return DatasetError(f"dataset '{name}' at {root}: {found}.\nExpected layout:\n{expected}")


def require_root(name: str, root: Path, expected: str) -> None:
    """Raise a layout error when the dataset root is not an existing folder."""
    if not root.is_dir():
        raise layout_error(name, root, expected, f"the root folder is missing: {describe_folder(root)}")


def describe_folder(path: Path, limit: int = 8) -> str:
    """A short description of what a folder holds, for error messages."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is not a folder"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not entries:
        return f"{path} is empty"
    more = f", ... ({len(entries)} entries)" if len(entries) > limit else ""
    return f"{path} holds: {', '.join(entries[:limit])}{more}"


def pair_by_stem(images: dict[str, Path], labels: dict[str, Path], name: str) -> list[tuple[str, str]]:
    """Pair images and labels that share a key; warn once about unpaired files (they are skipped)."""
    keys = sorted(set(images) & set(labels))
    lonely_img = sorted(set(images) - set(labels))
    lonely_lbl = sorted(set(labels) - set(images))
    if (lonely_img or lonely_lbl) and keys:
        warnings.warn(f"dataset '{name}': skipping {len(lonely_img)} images without a label "
                      f"(e.g. {[str(images[k]) for k in lonely_img[:3]]}) and {len(lonely_lbl)} labels without an "
                      f"image (e.g. {[str(labels[k]) for k in lonely_lbl[:3]]})", DatasetWarning, stacklevel=3)
    return [(str(images[k]), str(labels[k])) for k in keys]
