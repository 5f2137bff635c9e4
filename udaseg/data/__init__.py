"""Datasets, labels, transforms, rare-class sampling and the run-input check.

    from udaseg.data import build_dataset
    src = build_dataset("gta5:/data/gta", role="source")
    tgt = build_dataset("acdc:/data/acdc", role="target", conditions=["night"])
    val = build_dataset("cityscapes:/data/cityscapes", split="val")
    item = src[0]  # {"image": (3, H, W) float32 in [0, 1], "label": (H, W) int64, "name": str, "index": int}

Items are whole images; training crops/flips are `udaseg.engine.data.TrainView`'s. `udaseg.data.check` reads
every pair once before a run (`check_dataset`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from udaseg.data.acdc import acdc
from udaseg.data.base import DatasetWarning, LabelWarning, SegDataset
from udaseg.data.bdd100k import bdd100k
from udaseg.data.cityscapes import cityscapes
from udaseg.data.darkzurich import darkzurich
from udaseg.data.folder import folder
from udaseg.data.gta5 import gta5
from udaseg.data.io import DataError, DatasetError
from udaseg.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, PROTOCOLS, colorize
from udaseg.data.mapillary import mapillary
from udaseg.data.recordings import rosbag, video  # rosbags / PyAV are imported only when one is built
from udaseg.data.synthia import synthia

__all__ = [
    "CLASS_NAMES", "DataError", "DatasetError", "DatasetWarning", "IGNORE_INDEX", "LabelWarning", "NUM_CLASSES",
    "PALETTE", "PROTOCOLS", "SegDataset", "build_dataset", "colorize", "dataset_names", "dataset_options",
    "parse_spec",
]  # fmt: skip

_LOADERS: dict[str, Callable[..., SegDataset]] = {
    "gta5": gta5, "synthia": synthia, "cityscapes": cityscapes, "folder": folder, "acdc": acdc,
    "darkzurich": darkzurich, "bdd100k": bdd100k, "mapillary": mapillary, "rosbag": rosbag, "video": video,
}  # fmt: skip
_ALIASES = {
    "gta": "gta5",
    "gtav": "gta5",
    "cs": "cityscapes",
    "dark_zurich": "darkzurich",
    "dz": "darkzurich",
    "bdd": "bdd100k",
    "vistas": "mapillary",
    "mapillary_vistas": "mapillary",
}
_SYNTHETIC = ("synthetic", "synthetic_source", "synthetic_target")


def dataset_names() -> list[str]:
    """Names accepted by `build_dataset`."""
    return sorted(_LOADERS) + list(_SYNTHETIC)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'NAME[:ROOT]' -> (name, root or None). Splits at the first ':' only, so a root may contain more."""
    name, sep, root = spec.partition(":")
    name = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in _LOADERS and name not in _SYNTHETIC:
        raise DatasetError(
            f"unknown dataset {name!r} in spec {spec!r}: expected NAME[:ROOT] with NAME in {dataset_names()}"
        )
    return name, (root.strip() or None) if sep else None


def dataset_options(spec: str, data_config: Any) -> dict[str, Any]:
    """The loader options of a spec's dataset from a data config: its `<name>` entry (`data.acdc`,
    `data.synthetic`, ...), looked up as an attribute or a mapping key; {} when it has none."""
    name, _ = parse_spec(spec)
    key = "synthetic" if name in _SYNTHETIC else name
    options = data_config.get(key) if isinstance(data_config, Mapping) else getattr(data_config, key, None)
    return dict(options or {})


def _check_options(name: str, loader: Callable, options: dict) -> None:
    """Unknown loader options are a user's mistake: name them and the valid ones (no TypeError traceback)."""
    params = inspect.signature(loader).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [k for k in params if k not in ("root", "split", "domain")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DatasetError(
            f"dataset '{name}' has no option {', '.join(map(repr, unknown))}: expected one of "
            f"{valid} (set them with --set data.{name}.KEY=VALUE)"
        )


def build_dataset(spec: str, split: str = "train", role: str = "target", **options) -> SegDataset:
    """Build a dataset from a spec `NAME[:ROOT]`.

    Args:
        spec: `gta5:ROOT`, `synthia:ROOT`, `cityscapes:ROOT`, `acdc:ROOT`, `darkzurich:ROOT`, `bdd100k:ROOT`,
            `mapillary:ROOT`, `folder:ROOT`, or `synthetic[:CACHE]` (`synthetic` is the source domain for
            role="source", the target domain otherwise; `synthetic_source` / `synthetic_target` name one).
        split: "train", "val", ... (what each format offers).
        role: "source" (must be labelled: an unlabelled dataset is refused, naming the missing label folder) or
            "target".
        options: loader options: `size_mismatch="resize"`; `labels=False` (Cityscapes, ACDC, Dark Zurich, BDD100K,
            Mapillary); ACDC `conditions`, Dark Zurich `times`, Mapillary `version`; synthetic `count`, `size`,
            `seed`, `workers`.
    """
    name, root = parse_spec(spec)
    if role not in ("source", "target"):
        raise ValueError(f"role must be 'source' or 'target', got {role!r}")
    if name in _SYNTHETIC:
        from udaseg.data.synthetic import synthetic  # generation code is only imported when used

        _check_options("synthetic", synthetic, options)
        domain = name.removeprefix("synthetic_") if name != "synthetic" else role
        return synthetic(root, split=split, domain=domain, **options)
    if root is None:
        raise DatasetError(f"dataset spec {spec!r} needs a root folder: '{name}:/path/to/{name}'")
    _check_options(name, _LOADERS[name], options)
    dataset = _LOADERS[name](root, split=split, **options)
    if role == "source" and not dataset.labelled:
        raise DatasetError(
            f"source dataset {dataset.describe()} has no labels: {dataset.unlabelled_reason}. "
            f"The source domain must be labelled; expected its label files there."
        )
    return dataset
