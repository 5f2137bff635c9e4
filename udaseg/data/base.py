"""`SegDataset`: a list of (image, label) files, a label reader and a lookup table.

Every loader (GTA5, SYNTHIA, Cityscapes, ACDC, Dark Zurich, BDD100K, Mapillary Vistas, folder, synthetic) is a
function that finds the files and returns a `SegDataset`; the class itself knows nothing about formats. It is a
plain picklable object (paths, a numpy LUT, a module-level reader function), so DataLoader workers get a copy.
Items are whole images: the training crops, scales and flips are `udaseg.engine.data.TrainView`'s.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
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


class SegDataset(Dataset):
    """Image/label pairs mapped to train ids. Items: {"image": (3, H, W) float32 in [0, 1], "label": (H, W) int64,
    "name": str, "index": int}.

    `labelled` is True when every image has a label file; an unlabelled dataset (target-domain images) gives
    all-ignore labels and says in `unlabelled_reason` where its labels were looked for (e.g. "ROOT/gtFine/val
    does not exist"), so a check that needs labels can name the missing folder.
    """

    def __init__(
        self,
        files: Sequence[tuple[str, str | None]],
        *,
        name: str,
        root: str,
        split: str,
        lut: np.ndarray,
        label_reader: LabelReader = read_label,
        class_names: Sequence[str] = CLASS_NAMES,
        size_mismatch: str = "error",
        unlabelled_reason: str = "",
    ):
        if size_mismatch not in ("error", "resize"):
            raise DatasetError(f"dataset '{name}': size_mismatch must be 'error' or 'resize', found {size_mismatch!r}")
        self.files = [(str(i), None if lb is None else str(lb)) for i, lb in files]
        self.name, self.root, self.split = name, str(root), split
        self.lut, self.label_reader = lut, label_reader
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = IGNORE_INDEX
        self.size_mismatch = size_mismatch
        self.labelled = bool(self.files) and all(lb is not None for _, lb in self.files)
        self.unlabelled_reason = "" if self.labelled else (unlabelled_reason or "the images have no label files")
        self.unknown_pixels = 0  # pixels with undefined label values seen by this process
        self._warned = False

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        kind = "labelled" if self.labelled else "unlabelled"
        return f"SegDataset({self.name}, split={self.split}, root={self.root}, n={len(self)}, {kind})"

    def describe(self) -> str:
        """'name:root (split)' for messages."""
        return f"{self.name}:{self.root} (split {self.split})"

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
        warnings.warn(
            f"{path}: {n} pixels with label values {values} that dataset '{self.name}' does not define "
            f"(expected values in {known.min()}..{known.max()}) were set to ignore ({IGNORE_INDEX}). "
            f"Further ones are counted in dataset.unknown_pixels without more warnings.",
            LabelWarning,
            stacklevel=3,
        )

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """((H, W, 3) uint8 image, (H, W) uint8 train ids) of item i, sizes checked."""
        img_path, lbl_path = self.files[i]
        image = read_image(img_path)
        label = self.load_label(i)
        if image.shape[:2] != label.shape:
            if self.size_mismatch == "error":
                raise DatasetError(size_mismatch_message(self.name, img_path, image.shape[:2], lbl_path, label.shape))
            label = T.resize_label(torch.from_numpy(label), image.shape[:2]).numpy()
        return image, label

    def __getitem__(self, i: int) -> dict:
        image, label = self.load(int(i))
        img = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        return {
            "image": img.contiguous(),
            "label": torch.from_numpy(label).long(),
            "name": Path(self.files[i][0]).name,
            "index": int(i),
        }


def size_mismatch_message(
    name: str, img_path: str, img_hw: tuple[int, int], lbl_path: str | None, lbl_hw: tuple[int, int]
) -> str:
    return (
        f"image/label size mismatch in dataset '{name}': {img_path} is {img_hw[1]}x{img_hw[0]} (WxH) but "
        f"{lbl_path} is {lbl_hw[1]}x{lbl_hw[0]}; expected equal sizes. Fix the files, or pass "
        f"size_mismatch='resize' to resize labels to their image."
    )


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
        warnings.warn(
            f"dataset '{name}': skipping {len(lonely_img)} images without a label "
            f"(e.g. {[str(images[k]) for k in lonely_img[:3]]}) and {len(lonely_lbl)} labels without an "
            f"image (e.g. {[str(labels[k]) for k in lonely_lbl[:3]]})",
            DatasetWarning,
            stacklevel=3,
        )
    return [(str(images[k]), str(labels[k])) for k in keys]


def match_labels(
    name: str,
    root: Path,
    layout: str,
    images: Sequence[Path],
    labels: Sequence[Path],
    label_dirs: Sequence[Path],
    use: bool | None,
) -> tuple[list[tuple[str, str | None]], str]:
    """Pair each image with its expected label file: ((image, label or None) pairs, unlabelled reason).

    `use=None`: labels are read when every folder of `label_dirs` exists (then every image needs its label) and
    the split is unlabelled when none does; `use=True`: required; `use=False`: never read.
    """
    if use is False:
        return [(str(i), None) for i in images], "labels=False was given"
    present = [d for d in label_dirs if d.is_dir()]
    if not present and not use:
        missing = ", ".join(str(d) for d in label_dirs[:3]) + (" ..." if len(label_dirs) > 3 else "")
        return [(str(i), None) for i in images], f"{missing} does not exist" if len(
            label_dirs
        ) == 1 else f"{missing} do not exist"
    absent = [d for d in label_dirs if not d.is_dir()]
    if absent:
        raise layout_error(
            name,
            root,
            layout,
            f"label folder {absent[0]} is missing ({len(absent)} of "
            f"{len(label_dirs)} label folders are); expected one beside each image folder",
        )
    lonely = [str(lb) for lb in labels if not lb.is_file()]
    if lonely:
        raise layout_error(
            name, root, layout, f"{len(lonely)} of {len(images)} images have no label file: expected e.g. {lonely[:3]}"
        )
    return [(str(i), str(lb)) for i, lb in zip(images, labels, strict=True)], ""


def find_images(name: str, root: Path, layout: str, folders: Sequence[Path], pattern: str) -> list[Path]:
    """Sorted files matching `pattern` under each folder; a layout error naming the first missing/empty one."""
    images: list[Path] = []
    for folder in folders:
        found = sorted(folder.glob(pattern))
        if not found:
            raise layout_error(name, root, layout, f"no {pattern} files in {folder}: {describe_folder(folder)}")
        images += found
    return images


def pick_values(name: str, option: str, given, allowed: Sequence[str]) -> list[str]:
    """A list option checked against its allowed values (a single string counts as a one-element list)."""
    values = [given] if isinstance(given, str) else list(given) if isinstance(given, (list, tuple)) else None
    bad = [v for v in values or [] if v not in allowed]
    if not values or bad:
        raise DatasetError(
            f"dataset '{name}': option {option}={given!r}: expected a non-empty list of values from "
            f"{list(allowed)}" + (f"; {bad} are not among them" if bad else "")
        )
    return values
