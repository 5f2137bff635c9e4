"""SYNTHIA RAND-CITYSCAPES: `ROOT/RGB/*.png` and `ROOT/GT/LABELS/*.png`.

Labels are 16-bit multi-channel PNGs; the class id is in the first channel (DAFormer reads it with OpenCV as
`[:, :, -1]`, i.e. the first channel in RGB order; Pillow keeps only the high byte of 16-bit colour samples, so
`io.read_label_channel` decodes them). SYNTHIA has no terrain, truck or train: evaluate with the 16- or 13-class
protocol (`labels.PROTOCOLS`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from udaseg.data.base import SegDataset, describe_folder, layout_error, pair_by_stem, require_root
from udaseg.data.gta5 import index_folder, select_split
from udaseg.data.io import read_label_channel
from udaseg.data.labels import SYNTHIA_LUT

LAYOUT = """  ROOT/
    RGB/0000000.png ...           RGB frames
    GT/LABELS/0000000.png ...     16-bit PNG, class id in the first channel
    [<split>.txt]                 optional list of file names for splits other than 'train'"""


def read_synthia_label(path: str) -> np.ndarray:
    """(H, W) int32 SYNTHIA class ids (first channel)."""
    return read_label_channel(path, 0)


def synthia(root: str | Path, split: str = "train", size_mismatch: str = "error") -> SegDataset:
    """SYNTHIA dataset mapped to the 19 Cityscapes train ids (terrain, truck and train never occur)."""
    root = Path(root).expanduser()
    require_root("synthia", root, LAYOUT)
    images, labels = index_folder(root / "RGB"), index_folder(root / "GT" / "LABELS", (".png",))
    if not images or not labels:
        kind, missing = ("image", root / "RGB") if not images else ("label (.png)", root / "GT" / "LABELS")
        raise layout_error("synthia", root, LAYOUT, f"no {kind} files found: {describe_folder(missing)}")
    pairs = pair_by_stem(images, labels, "synthia")
    if not pairs:
        raise layout_error("synthia", root, LAYOUT, "no image in RGB/ has a label of the same name in GT/LABELS/")
    pairs = select_split(pairs, root, split, "synthia", LAYOUT)
    return SegDataset(
        pairs,
        name="synthia",
        root=str(root),
        split=split,
        lut=SYNTHIA_LUT,
        label_reader=read_synthia_label,
        size_mismatch=size_mismatch,
    )
