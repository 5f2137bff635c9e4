"""GTA5 (Richter et al. 2016): `ROOT/images/*.png` and `ROOT/labels/*.png` with Cityscapes labelIds.

Files pair by name (`00001.png` with `00001.png`). GTA5 has no official split: split `train` (or `all`) takes every
pair; any other split reads the names listed in `ROOT/<split>.txt` (one file name or stem per line).
"""

from __future__ import annotations

from pathlib import Path

from udaseg.data.base import SegDataset, describe_folder, layout_error, pair_by_stem, require_root
from udaseg.data.labels import GTA5_LUT

IMAGE_EXTS = (".png", ".jpg", ".jpeg")

LAYOUT = """  ROOT/
    images/00001.png ...    RGB frames
    labels/00001.png ...    Cityscapes labelIds (8-bit, palette or grey)
    [<split>.txt]           optional list of file names for splits other than 'train'"""


def index_folder(folder: Path, exts: tuple[str, ...] = IMAGE_EXTS, suffix: str = "") -> dict[str, Path]:
    """{key: path} of the files in a folder whose name ends with `suffix` + one of `exts`; key = name minus both."""
    out = {}
    if folder.is_dir():
        for p in folder.iterdir():
            low = p.name.lower()
            for ext in exts:
                if low.endswith(suffix.lower() + ext):
                    out[p.name[: len(p.name) - len(suffix) - len(ext)]] = p
                    break
    return out


def select_split(pairs: list[tuple[str, str]], root: Path, split: str, name: str, layout: str) -> list[tuple[str, str]]:
    """All pairs for split train/all, else the ones named in ROOT/<split>.txt."""
    if split in ("train", "all"):
        return pairs
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise layout_error(
            name,
            root,
            layout,
            f"split '{split}' needs a file list {listing}, which is missing (only 'train'/'all' work without one)",
        )
    wanted = {Path(line.strip()).stem for line in listing.read_text().splitlines() if line.strip()}
    chosen = [p for p in pairs if Path(p[0]).stem in wanted]
    if not chosen:
        raise layout_error(name, root, layout, f"none of the {len(wanted)} names in {listing} matches a pair")
    return chosen


def gta5(root: str | Path, split: str = "train", size_mismatch: str = "error") -> SegDataset:
    """GTA5 dataset mapped to the 19 Cityscapes train ids."""
    root = Path(root).expanduser()
    require_root("gta5", root, LAYOUT)
    images, labels = index_folder(root / "images"), index_folder(root / "labels", (".png",))
    if not images or not labels:
        kind, missing = ("image", root / "images") if not images else ("label (.png)", root / "labels")
        raise layout_error("gta5", root, LAYOUT, f"no {kind} files found: {describe_folder(missing)}")
    pairs = pair_by_stem(images, labels, "gta5")
    if not pairs:
        raise layout_error("gta5", root, LAYOUT, "no image in images/ has a label of the same name in labels/")
    pairs = select_split(pairs, root, split, "gta5", LAYOUT)
    return SegDataset(pairs, name="gta5", root=str(root), split=split, lut=GTA5_LUT, size_mismatch=size_mismatch)
