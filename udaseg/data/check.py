"""Check a run's inputs before the first iteration: every pair readable, sizes equal, labels where needed.

    from udaseg.data.check import check_dataset
    report = check_dataset(source, role="source", require_labels=True)   # raises DataError listing bad files
    print(report.summary())   # source gta5:/data/gta (split train): 24,966 pairs, all readable, sizes match, ...

Images are checked for completeness without decoding where the format allows (`io.verify_image`: PNG chunk CRCs
up to IEND, the JPEG end marker), labels are decoded when they are required (their class pixel counts are the
report's `counts`, which rare-class sampling can reuse instead of decoding every label again). A labelled set
whose every pixel is ignore (or undefined) is refused: it would train nothing, or evaluate to an mIoU of nan.

A dataset whose images are not files (frames of a recording) provides `verify_item(i) -> (H, W)`, which reads
item i's image and raises `DatasetError` naming it when it cannot be read; the check then calls that instead.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from udaseg.data.base import size_mismatch_message
from udaseg.data.io import DataError, DatasetError, verify_image
from udaseg.data.labels import IGNORE_INDEX, apply_lut

__all__ = ["DataError", "DataReport", "check_dataset"]

SHOW = 10  # offending files listed in an error; the rest are counted
_HINTS = {
    "source": "the source domain must be labelled",
    "val": "evaluation needs labels: point data.val/val_split at a labelled split, or train with --no-eval",
}


@dataclass
class DataReport:
    """What `check_dataset` found. `counts`: (N, C) int64 class pixels per item when labels were read (pass them
    with `pixels` to `rcs.class_stats` so rare-class sampling does not decode the labels again)."""

    role: str
    name: str
    root: str
    split: str
    pairs: int
    labels_read: bool
    class_names: tuple[str, ...]
    counts: np.ndarray | None = None  # (N, C)
    pixels: np.ndarray | None = None  # (N,) all pixels of each label, ignored ones included
    unknown_pixels: int = 0
    unknown_example: str = ""
    resized: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def classes_present(self) -> list[int]:
        return [] if self.counts is None else np.flatnonzero(self.counts.sum(axis=0)).tolist()

    def summary(self) -> str:
        """One line, e.g. 'source gta5:/data/gta (split train): 24,966 pairs, all readable, sizes match, 19 of 19
        classes present'."""
        head = f"{self.role} {self.name}:{self.root} (split {self.split}): "
        if not self.labels_read:
            return head + f"{self.pairs:,} images, all readable (labels not needed)" + self._tail()
        present, c = self.classes_present, len(self.class_names)
        sizes = "sizes match" if not self.resized else f"{self.resized:,} labels resized to their image"
        text = f"{self.pairs:,} pairs, all readable, {sizes}, {len(present)} of {c} classes present"
        absent = [self.class_names[i] for i in range(c) if i not in present]
        if absent and len(absent) <= 5:
            text += f" (absent: {', '.join(absent)})"
        return head + text + self._tail()

    def _tail(self) -> str:
        notes = list(self.notes)
        if self.unknown_pixels:
            notes.append(
                f"{self.unknown_pixels:,} pixels with undefined label values set to ignore "
                f"(e.g. {self.unknown_example})"
            )
        return "".join(f"; {n}" for n in notes)


def check_dataset(
    dataset, role: str, require_labels: bool, progress: bool = True, workers: int | None = None
) -> DataReport:
    """Read every pair of `dataset` once and raise `DataError` naming the bad files (the first 10, and a count).

    Args:
        dataset: a `SegDataset` (attributes files, name, root, split, labelled, unlabelled_reason, lut,
            label_reader, num_classes, class_names, size_mismatch).
        role: "source", "target" or "val": used in messages and the summary.
        require_labels: labels must exist, be readable, match their image's size and hold at least one pixel
            of a class (source and validation sets); else only the images are checked.
        progress: show a tqdm bar. workers: reader threads (decoding releases the GIL; default min(8, CPUs)).
    Returns:
        a `DataReport`; `.summary()` is one line for the log.
    """
    where = f"{role} dataset {dataset.name}:{dataset.root} (split {dataset.split})"
    if len(dataset) == 0:
        raise DataError(f"{where} holds no images")
    if require_labels and not dataset.labelled:
        hint = _HINTS.get(role, "labels are required here")
        raise DataError(f"{where} has no labels: {dataset.unlabelled_reason}; {hint}")
    start = time.perf_counter()
    n, c = len(dataset), dataset.num_classes
    counts = np.zeros((n, c), dtype=np.int64) if require_labels else None
    pixels = np.zeros(n, dtype=np.int64) if require_labels else None
    problems: list[tuple[int, str]] = []
    report = DataReport(
        role, dataset.name, dataset.root, dataset.split, n, require_labels, dataset.class_names, counts, pixels
    )

    verify = getattr(dataset, "verify_item", None)  # datasets whose images are not files (recordings)

    def one(i: int) -> tuple[int, str | None, np.ndarray | None, int, bool]:
        """(i, problem, class counts, unknown pixels, resized) of item i."""
        img_path, lbl_path = dataset.files[i]
        try:
            hw = verify(i) if verify is not None else verify_image(img_path)
            if not require_labels:
                return i, None, None, 0, False
            label, n_unknown, _ = apply_lut(dataset.label_reader(lbl_path), dataset.lut)  # (H, W) uint8
            resized = label.shape != hw
            if resized and dataset.size_mismatch == "error":
                return i, size_mismatch_message(dataset.name, img_path, hw, lbl_path, label.shape), None, 0, False
            return i, None, np.bincount(label.ravel(), minlength=256), n_unknown, resized
        except DatasetError as err:
            return i, str(err), None, 0, False
        except OSError as err:  # e.g. a permission error while opening: still one line naming the file
            return i, f"cannot read {img_path} / {lbl_path}: {err}", None, 0, False

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        bar = tqdm(
            pool.map(one, range(n)),
            total=n,
            disable=not progress,
            unit="pair" if require_labels else "img",
            desc=f"checking {role} {dataset.name}",
            leave=False,
        )
        for i, problem, hist, n_unknown, resized in bar:
            if problem is not None:
                problems.append((i, problem))
                continue
            if hist is not None:
                counts[i], pixels[i] = hist[:c], hist.sum()
            if n_unknown and not report.unknown_pixels:
                report.unknown_example = str(dataset.files[i][1])
            report.unknown_pixels += n_unknown
            report.resized += int(resized)
    report.seconds = time.perf_counter() - start
    if problems:
        listed = "\n  ".join(p for _, p in sorted(problems)[:SHOW])
        more = f"\n  ... and {len(problems) - SHOW} more" if len(problems) > SHOW else ""
        raise DataError(f"{where}: {len(problems)} of {n} pairs cannot be used:\n  {listed}{more}")
    if require_labels and counts.sum() == 0:
        raise DataError(
            f"{where}: every pixel of its {n} label files is ignore ({IGNORE_INDEX}) or a value the "
            f"format does not define ({report.unknown_pixels:,} such pixels); expected labelled pixels "
            f"of the {c} classes. Check the label files (e.g. {dataset.files[0][1]}) and, for a folder "
            f"dataset, the classes.yaml mapping"
        )
    return report
