"""ACDC (Sakaridis et al. 2021): adverse conditions (fog, night, rain, snow) with Cityscapes train-id labels.

    ROOT/rgb_anon/<condition>/<split>/<sequence>/<stem>_rgb_anon.png
    ROOT/gt/<condition>/<split>/<sequence>/<stem>_gt_labelTrainIds.png     (train and val; test labels withheld)

ROOT is the folder holding both `rgb_anon/` and `gt/` (unpack `rgb_anon_trainvaltest.zip` and `gt_trainval.zip`
into one folder). `conditions` selects the weather (default all four: `--set data.acdc.conditions=[night]`).
The `<split>_ref` splits (daytime reference images, `<stem>_rgb_ref_anon.png`) load unlabelled. Labels are read
from `*_gt_labelTrainIds.png` (19 classes, 255 ignore) or, where only those exist, `*_gt_labelIds.png`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from udaseg.data.base import SegDataset, find_images, layout_error, match_labels, pick_values, require_root
from udaseg.data.labels import CITYSCAPES_LUT, TRAINID_LUT

CONDITIONS = ("fog", "night", "rain", "snow")
LAYOUT = """  ROOT/
    rgb_anon/<condition>/<split>/<sequence>/<stem>_rgb_anon.png      condition: fog, night, rain, snow
    gt/<condition>/<split>/<sequence>/<stem>_gt_labelTrainIds.png    splits train, val (test: no labels)"""


def label_files(
    name: str, root: Path, layout: str, groups: Sequence[tuple[Path, Path]], images: Sequence[Path], img_suffix: str
) -> tuple[list[Path], np.ndarray]:
    """(label path per image, LUT) for images found under the image folders of `groups` [(image folder, label
    folder)]: the same relative path under the label folder, named `<stem>_gt_labelTrainIds.png`, or
    `<stem>_gt_labelIds.png` where only those exist (mapped through the Cityscapes labelId table)."""
    out, kinds = [], set()
    for img_root, gt_root in groups:
        part = [i for i in images if i.is_relative_to(img_root)]

        def paths(kind: str, part=part, img_root=img_root, gt_root=gt_root) -> list[Path]:
            return [
                gt_root / i.parent.relative_to(img_root) / f"{i.name[: -len(img_suffix)]}_gt_{kind}.png" for i in part
            ]

        found, kind = paths("labelTrainIds"), "labelTrainIds"
        if part and not any(p.is_file() for p in found) and all(p.is_file() for p in paths("labelIds")):
            found, kind = paths("labelIds"), "labelIds"
        out += found
        if gt_root.is_dir():
            kinds.add(kind)
    if len(kinds) > 1:
        raise layout_error(
            name,
            root,
            layout,
            "some label folders hold only *_gt_labelIds.png and others "
            "*_gt_labelTrainIds.png; expected one kind for all (re-run the label conversion)",
        )
    return out, CITYSCAPES_LUT if kinds == {"labelIds"} else TRAINID_LUT


def acdc(
    root: str | Path,
    split: str = "train",
    conditions: Sequence[str] = CONDITIONS,
    labels: bool | None = None,
    size_mismatch: str = "error",
) -> SegDataset:
    """ACDC `split` (train/val/test, or train_ref/val_ref/test_ref) of the chosen `conditions`."""
    root = Path(root).expanduser()
    require_root("acdc", root, LAYOUT)
    conds = pick_values("acdc", "conditions", conditions, CONDITIONS)
    ref = split.endswith("_ref")
    suffix = "_rgb_ref_anon.png" if ref else "_rgb_anon.png"
    groups = [(root / "rgb_anon" / c / split, root / "gt" / c / split) for c in conds]
    images = find_images("acdc", root, LAYOUT, [g[0] for g in groups], f"*/*{suffix}")
    use = False if ref else labels
    lbls, lut = label_files("acdc", root, LAYOUT, groups, images, suffix) if use is not False else ([], TRAINID_LUT)
    pairs, reason = match_labels("acdc", root, LAYOUT, images, lbls, [g[1] for g in groups], use)
    if ref:
        reason = f"split '{split}' holds daytime reference images without labels"
    return SegDataset(
        pairs, name="acdc", root=str(root), split=split, lut=lut, size_mismatch=size_mismatch, unlabelled_reason=reason
    )
