"""Cityscapes: `ROOT/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png` with
`ROOT/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png` (used when present, e.g. written by DAFormer's or
cityscapesScripts' converters) or else `<stem>_gtFine_labelIds.png` (mapped through the labelId LUT).

The unlabelled `train_extra`/`test` splits load with `labels=False` (all-ignore labels), as does a split whose
`gtFine/<split>` folder is absent (target-domain images); such a dataset has `labelled=False`, and the run-input
check (`udaseg.data.check`) refuses it as a validation set, naming the missing `gtFine/<split>` folder.
"""

from __future__ import annotations

from pathlib import Path

from udaseg.data.base import SegDataset, describe_folder, layout_error, require_root
from udaseg.data.labels import CITYSCAPES_LUT, TRAINID_LUT

LAYOUT = """  ROOT/
    leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
    gtFine/<split>/<city>/<stem>_gtFine_labelIds.png        (or <stem>_gtFine_labelTrainIds.png)"""

IMG_SUFFIX = "_leftImg8bit.png"


def _find_labels(gt_root: Path, images: list[Path]) -> tuple[list[str] | None, bool]:
    """(label paths, are_train_ids): labelTrainIds when every image has one, else labelIds when every image has
    one, else (None, False)."""
    for kind, is_train in (("labelTrainIds", True), ("labelIds", False)):
        paths = [gt_root / img.parent.name / f"{img.name[: -len(IMG_SUFFIX)]}_gtFine_{kind}.png" for img in images]
        if all(p.is_file() for p in paths):
            return [str(p) for p in paths], is_train
    return None, False


def cityscapes(
    root: str | Path, split: str = "train", labels: bool | None = None, size_mismatch: str = "error"
) -> SegDataset:
    """Cityscapes `split` (train/val/test/train_extra). `labels=None`: required, except where gtFine/<split> is
    missing entirely (unlabelled target data); `labels=False`: never read them."""
    root = Path(root).expanduser()
    require_root("cityscapes", root, LAYOUT)
    img_dir = root / "leftImg8bit" / split
    images = sorted(img_dir.glob(f"*/*{IMG_SUFFIX}"))
    if not images:
        raise layout_error(
            "cityscapes", root, LAYOUT, f"no *{IMG_SUFFIX} files for split '{split}': {describe_folder(img_dir)}"
        )
    gt_root = root / "gtFine" / split
    use_labels = gt_root.is_dir() if labels is None else labels
    if not use_labels:
        reason = f"{gt_root} does not exist" if labels is None else "labels=False was given"
        return SegDataset(
            [(str(img), None) for img in images],
            name="cityscapes",
            root=str(root),
            split=split,
            lut=TRAINID_LUT,
            unlabelled_reason=reason,
            size_mismatch=size_mismatch,
        )
    else:
        found, is_train = _find_labels(gt_root, images)
        if found is None:
            missing = [
                str(img)
                for img in images
                if not any(
                    (gt_root / img.parent.name / f"{img.name[: -len(IMG_SUFFIX)]}_gtFine_{k}.png").is_file()
                    for k in ("labelIds", "labelTrainIds")
                )
            ]
            if not missing:
                raise layout_error(
                    "cityscapes",
                    root,
                    LAYOUT,
                    f"{gt_root} mixes images labelled only by "
                    f"*_labelIds.png and only by *_labelTrainIds.png; expected one kind for all "
                    f"(re-run the label conversion for every image)",
                )
            raise layout_error(
                "cityscapes",
                root,
                LAYOUT,
                f"{len(missing)} of {len(images)} images have no "
                f"*_gtFine_labelIds.png / *_gtFine_labelTrainIds.png label in {gt_root}, e.g. "
                f"{missing[:3]}",
            )
        pairs, lut = list(zip(map(str, images), found)), TRAINID_LUT if is_train else CITYSCAPES_LUT
    return SegDataset(pairs, name="cityscapes", root=str(root), split=split, lut=lut, size_mismatch=size_mismatch)
