"""Datasets, labels, transforms and rare-class sampling.

    from udaseg.data import build_dataset
    src = build_dataset("gta5:/data/gta", role="source", crop_size=512, resize=(720, 1280), flip=True)
    tgt = build_dataset("synthetic", role="target", crop_size=(128, 128), flip=True)
    val = build_dataset("cityscapes:/data/cityscapes", split="val")
    item = src[0]  # {"image": (3, H, W) float32 in [0, 1], "label": (H, W) int64, "name": str, "index": int}
"""

from __future__ import annotations

from collections.abc import Callable

from udaseg.data.base import Augment, DatasetWarning, LabelWarning, SegDataset
from udaseg.data.cityscapes import cityscapes
from udaseg.data.folder import folder
from udaseg.data.gta5 import gta5
from udaseg.data.io import DatasetError
from udaseg.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, PROTOCOLS, colorize
from udaseg.data.synthia import synthia

__all__ = [
    "Augment", "CLASS_NAMES", "DatasetError", "DatasetWarning", "IGNORE_INDEX", "LabelWarning", "NUM_CLASSES",
    "PALETTE", "PROTOCOLS", "SegDataset", "build_dataset", "colorize", "dataset_names", "parse_spec",
]  # fmt: skip

_LOADERS: dict[str, Callable[..., SegDataset]] = {
    "gta5": gta5, "synthia": synthia, "cityscapes": cityscapes, "folder": folder,
}  # fmt: skip
_ALIASES = {"gta": "gta5", "gtav": "gta5", "cs": "cityscapes"}
_SYNTHETIC = ("synthetic", "synthetic_source", "synthetic_target")


def dataset_names() -> list[str]:
    """Names accepted by `build_dataset`."""
    return sorted(_LOADERS) + list(_SYNTHETIC)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'NAME[:ROOT]' -> (name, root or None). Splits at the first ':' only, so a root may contain more."""
    name, sep, root = spec.partition(":")
    name = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in _LOADERS and name not in _SYNTHETIC:
        raise DatasetError(f"unknown dataset {name!r} in spec {spec!r}: expected NAME[:ROOT] with NAME in "
                           f"{dataset_names()}")
    return name, (root.strip() or None) if sep else None


def _size(value) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    h, w = value
    return (int(h), int(w))


def build_dataset(spec: str, split: str = "train", role: str = "target", crop_size=None,
                  scale_range: tuple[float, float] | None = None, flip: bool = False, resize=None,
                  cat_max_ratio: float | None = None, **options) -> SegDataset:
    """Build a dataset from a spec `NAME[:ROOT]`.

    Args:
        spec: `gta5:ROOT`, `synthia:ROOT`, `cityscapes:ROOT`, `folder:ROOT`, or `synthetic[:CACHE]`
            (`synthetic` is the source domain for role="source", the target domain otherwise;
            `synthetic_source` / `synthetic_target` name one explicitly).
        split: "train", "val", ... (what each format offers).
        role: "source" or "target" (only `synthetic` looks at it).
        crop_size: int or (h, w): random crop (train-time); None keeps whole images.
        scale_range: (low, high) random rescale before the crop. flip: random horizontal flip.
        resize: int or (h, w) applied to every pair first (e.g. GTA5 (720, 1280), Cityscapes (512, 1024)).
        cat_max_ratio: retry crops dominated by one class (DAFormer: 0.75).
        options: loader options: `size_mismatch="resize"`, Cityscapes `labels=False`, synthetic `count`,
            `size`, `seed`, `workers`.
    """
    name, root = parse_spec(spec)
    if role not in ("source", "target"):
        raise ValueError(f"role must be 'source' or 'target', got {role!r}")
    augment = Augment(resize=_size(resize), crop_size=_size(crop_size), flip=flip,
                      scale_range=tuple(scale_range) if scale_range is not None else None,
                      cat_max_ratio=cat_max_ratio)
    if name in _SYNTHETIC:
        from udaseg.data.synthetic import synthetic  # generation code is only imported when used

        domain = name.removeprefix("synthetic_") if name != "synthetic" else role
        return synthetic(root, split=split, domain=domain, augment=augment, **options)
    if root is None:
        raise DatasetError(f"dataset spec {spec!r} needs a root folder: '{name}:/path/to/{name}'")
    return _LOADERS[name](root, split=split, augment=augment, **options)
