"""A user's own data: a folder of images, a folder of masks and a YAML class map.

    ROOT/
      classes.yaml
      images/[<split>/]<stem>.png|jpg
      masks/[<split>/]<stem><mask_suffix>.png      8- or 16-bit single-channel class values

`classes.yaml`:

    classes:            # mask value -> class name, train id, or "ignore"
      0: road
      1: sidewalk
      7: car
      255: ignore
    class_names: [...]  # optional: your own taxonomy (default: the 19 Cityscapes classes)
    images: images      # optional folder names and mask file suffix
    masks: masks
    mask_suffix: ""

Without per-split subfolders the flat folders are split `train` (or `all`). A split without a masks folder is
unlabelled (all-ignore labels, for target-domain training), except `val`, which must have masks; used as the
labelled source it is refused, naming the missing masks folder. `images`/`masks` must name folders inside ROOT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from udaseg.data.base import SegDataset, describe_folder, layout_error, pair_by_stem, require_root
from udaseg.data.gta5 import IMAGE_EXTS, index_folder
from udaseg.data.io import DatasetError
from udaseg.data.labels import CLASS_NAMES, IGNORE_INDEX, UNKNOWN

LAYOUT = __doc__.split("\n\n")[1]
CLASS_FILE = "classes.yaml"


def load_class_map(path: Path) -> tuple[np.ndarray, tuple[str, ...], dict]:
    """Read classes.yaml -> (LUT (65536,) int16, class names, the raw YAML dict)."""
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise DatasetError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(cfg, dict) or not isinstance(cfg.get("classes"), dict) or not cfg["classes"]:
        raise DatasetError(
            f"{path}: expected a mapping with a non-empty 'classes' entry (mask value -> class name, "
            f"train id or 'ignore'), found {cfg!r:.200}"
        )
    names = tuple(cfg.get("class_names") or CLASS_NAMES)
    lut = np.full(65536, UNKNOWN, dtype=np.int16)
    for key, value in cfg["classes"].items():
        lut[_mask_value(key, path)] = _train_id(value, names, path)
    return lut, names, cfg


def _mask_value(key, path: Path) -> int:
    try:
        value = int(key)
    except (TypeError, ValueError):
        value = -1
    if not 0 <= value < 65536:
        raise DatasetError(f"{path}: mask value {key!r} is not an integer in 0..65535")
    return value


def _train_id(value, names: tuple[str, ...], path: Path) -> int:
    """Class name / train id / 'ignore' -> train id."""
    if isinstance(value, str):
        if value.strip().lower() in ("ignore", "void", "unlabeled"):
            return IGNORE_INDEX
        lowered = [n.lower() for n in names]
        if value.strip().lower() in lowered:
            return lowered.index(value.strip().lower())
        raise DatasetError(f"{path}: class '{value}' is not one of {list(names)} (or 'ignore')")
    if isinstance(value, int) and (0 <= value < len(names) or value == IGNORE_INDEX):
        return value
    raise DatasetError(f"{path}: expected a class name, a train id in 0..{len(names) - 1} or 'ignore', found {value!r}")


def _subfolder(root: Path, cfg: dict, key: str, class_file: Path) -> Path:
    """ROOT/<cfg[key]>, refusing names that leave ROOT (absolute paths, '..'): a dataset's config file may not
    make the toolkit read (or list in an error) folders outside the dataset."""
    value = cfg.get(key, key)
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{class_file}: '{key}' must be a folder name inside {root}, found {value!r}")
    rel = Path(value.strip())
    if rel.is_absolute() or ".." in rel.parts or rel.drive:
        raise DatasetError(
            f"{class_file}: '{key}: {value}' points outside the dataset folder; expected a folder "
            f"name relative to {root} (no absolute path, no '..')"
        )
    return root / rel


def folder(root: str | Path, split: str = "train", size_mismatch: str = "error") -> SegDataset:
    """Images + masks + classes.yaml (see module docstring)."""
    root = Path(root).expanduser()
    require_root("folder", root, LAYOUT)
    class_file = root / CLASS_FILE
    if not class_file.is_file():
        raise layout_error("folder", root, LAYOUT, f"{class_file} is missing; {describe_folder(root)}")
    lut, names, cfg = load_class_map(class_file)
    img_dir, mask_dir = _subfolder(root, cfg, "images", class_file), _subfolder(root, cfg, "masks", class_file)
    if (img_dir / split).is_dir():
        img_dir, mask_dir = img_dir / split, mask_dir / split
    elif split not in ("train", "all"):
        raise layout_error(
            "folder",
            root,
            LAYOUT,
            f"split '{split}' needs {img_dir / split}/ (flat folders are split 'train'); {describe_folder(img_dir)}",
        )
    images = index_folder(img_dir, IMAGE_EXTS)
    if not images:
        raise layout_error("folder", root, LAYOUT, f"no images (.png/.jpg) found: {describe_folder(img_dir)}")
    reason = ""
    if not mask_dir.is_dir():
        if split == "val":
            raise layout_error("folder", root, LAYOUT, f"split 'val' needs masks: {describe_folder(mask_dir)}")
        pairs: list[tuple[str, str | None]] = [(str(images[k]), None) for k in sorted(images)]
        reason = f"{mask_dir} does not exist"
    else:
        masks = index_folder(mask_dir, (".png",), suffix=str(cfg.get("mask_suffix", "")))
        pairs = list(pair_by_stem(images, masks, "folder"))
        if not pairs:
            raise layout_error(
                "folder",
                root,
                LAYOUT,
                f"no image in {img_dir} has a mask of the same stem in "
                f"{mask_dir} (mask_suffix '{cfg.get('mask_suffix', '')}'); "
                f"{describe_folder(mask_dir)}",
            )
    return SegDataset(
        pairs,
        name="folder",
        root=str(root),
        split=split,
        lut=lut,
        class_names=names,
        size_mismatch=size_mismatch,
        unlabelled_reason=reason,
    )
