"""BDD100K semantic segmentation (Yu et al. 2020): 10k dash-cam frames from US cities, Cityscapes train ids.

    ROOT/images/10k/<split>/<name>.jpg                 split: train (7,000), val (1,000), test (2,000)
    ROOT/labels/sem_seg/masks/<split>/<name>.png       8-bit train ids 0..18, 255 ignore (train and val)

ROOT is the folder holding `images/` and `labels/` (unpack `bdd100k_images_10k.zip` and `bdd100k_sem_seg_labels_
trainval.zip` into one folder). The masks already use the 19 Cityscapes classes, so no mapping is needed; the
test split has no public labels and loads unlabelled.
"""

from __future__ import annotations

from pathlib import Path

from udaseg.data.base import SegDataset, describe_folder, layout_error, match_labels, require_root
from udaseg.data.gta5 import index_folder
from udaseg.data.labels import TRAINID_LUT

LAYOUT = """  ROOT/
    images/10k/<split>/<name>.jpg             split: train, val, test
    labels/sem_seg/masks/<split>/<name>.png   train ids (0..18, 255); train and val only"""


def bdd100k(
    root: str | Path, split: str = "train", labels: bool | None = None, size_mismatch: str = "error"
) -> SegDataset:
    """BDD100K sem-seg `split` (train/val/test)."""
    root = Path(root).expanduser()
    require_root("bdd100k", root, LAYOUT)
    img_dir, mask_dir = root / "images" / "10k" / split, root / "labels" / "sem_seg" / "masks" / split
    found = index_folder(img_dir, (".jpg", ".jpeg", ".png"))
    if not found:
        raise layout_error("bdd100k", root, LAYOUT, f"no .jpg images for split '{split}': {describe_folder(img_dir)}")
    images = [found[k] for k in sorted(found)]
    masks = [mask_dir / f"{k}.png" for k in sorted(found)]
    pairs, reason = match_labels("bdd100k", root, LAYOUT, images, masks, [mask_dir], labels)
    if reason and split == "test" and labels is None:
        reason = f"BDD100K's test split has no public labels ({reason})"
    return SegDataset(
        pairs,
        name="bdd100k",
        root=str(root),
        split=split,
        lut=TRAINID_LUT,
        size_mismatch=size_mismatch,
        unlabelled_reason=reason,
    )
