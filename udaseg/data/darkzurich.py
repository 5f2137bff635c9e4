"""Dark Zurich (Sakaridis et al. 2019): night, twilight and day drives through Zurich, Cityscapes train ids.

    ROOT/rgb_anon/<split>/<time>/<sequence>/<stem>_rgb_anon.png          time: night, twilight, day
    ROOT/gt/val/night/<sequence>/<stem>_gt_labelTrainIds.png             (val only: test labels are withheld)

ROOT holds `rgb_anon/` (and `gt/` for val): unpack `Dark_Zurich_train_anon.zip` and `Dark_Zurich_val_anon.zip`
into one folder. `times` selects the times of day (default night, the Cityscapes -> Dark Zurich benchmark's
target: `--set data.darkzurich.times=[night,twilight]`); val and test hold night images only. The train split
and test have no labels; val's are read from `*_gt_labelTrainIds.png` (or `*_gt_labelIds.png`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from udaseg.data.acdc import label_files
from udaseg.data.base import SegDataset, find_images, match_labels, pick_values, require_root
from udaseg.data.labels import TRAINID_LUT

TIMES = ("night", "twilight", "day")
LAYOUT = """  ROOT/
    rgb_anon/<split>/<time>/<sequence>/<stem>_rgb_anon.png     time: night, twilight, day (val/test: night)
    gt/val/night/<sequence>/<stem>_gt_labelTrainIds.png        labels of val only"""
SUFFIX = "_rgb_anon.png"


def darkzurich(
    root: str | Path,
    split: str = "train",
    times: Sequence[str] = ("night",),
    labels: bool | None = None,
    size_mismatch: str = "error",
) -> SegDataset:
    """Dark Zurich `split` (train/val/test) of the chosen `times` of day."""
    root = Path(root).expanduser()
    require_root("darkzurich", root, LAYOUT)
    chosen = pick_values("darkzurich", "times", times, TIMES)
    groups = [(root / "rgb_anon" / split / t, root / "gt" / split / t) for t in chosen]
    images = find_images("darkzurich", root, LAYOUT, [g[0] for g in groups], f"*/*{SUFFIX}")
    lbls, lut = (
        label_files("darkzurich", root, LAYOUT, groups, images, SUFFIX) if labels is not False else ([], TRAINID_LUT)
    )
    pairs, reason = match_labels("darkzurich", root, LAYOUT, images, lbls, [g[1] for g in groups], labels)
    if reason and split in ("train", "test") and labels is None:
        reason = f"Dark Zurich's {split} split has no public labels ({reason})"
    return SegDataset(
        pairs,
        name="darkzurich",
        root=str(root),
        split=split,
        lut=lut,
        size_mismatch=size_mismatch,
        unlabelled_reason=reason,
    )
