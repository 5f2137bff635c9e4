"""Mapillary Vistas (Neuhold et al. 2017): street-level photos from six continents, mapped to the 19 Cityscapes
classes from either of its label sets, v1.2 (66 classes) or v2.0 (124 classes).

    ROOT/config_v1.2.json, ROOT/config_v2.0.json      class lists (label value = position in "labels")
    ROOT/<split>/images/<name>.jpg                    split: training, validation, testing (or train, val, test)
    ROOT/<split>/v1.2/labels/<name>.png               v1.2 palette PNG (value = class index); the v1.2-only
                                                      release keeps these in ROOT/<split>/labels/
    ROOT/<split>/v2.0/labels/<name>.png               v2.0 palette PNG

`version` picks the label set (`--set data.mapillary.version=v2.0`; default v1.2). The class list is read from
ROOT/config_<version>.json when present (else the published list below), and each Mapillary class maps by name
through `TO_CITYSCAPES`; classes Cityscapes does not evaluate (parking, rail track, guard rail, bridge, caravan,
trailer, billboards, ...) are ignored. docs/datasets.md gives the reasoning for the less obvious entries.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from udaseg.data.base import SegDataset, describe_folder, layout_error, match_labels, require_root
from udaseg.data.gta5 import index_folder
from udaseg.data.io import DatasetError
from udaseg.data.labels import CLASS_NAMES, make_lut

LAYOUT = """  ROOT/
    config_v1.2.json, config_v2.0.json
    <split>/images/<name>.jpg                 split: training, validation, testing
    <split>/v1.2/labels/<name>.png            (or <split>/labels/<name>.png in the v1.2-only release)
    <split>/v2.0/labels/<name>.png"""
SPLITS = {"train": "training", "val": "validation", "test": "testing"}
VERSIONS = ("v1.2", "v2.0")

# The published class lists, in label-value order (config_v1.2.json / config_v2.0.json "labels" names).
_V12 = """animal--bird animal--ground-animal construction--barrier--curb construction--barrier--fence
construction--barrier--guard-rail construction--barrier--other-barrier construction--barrier--wall
construction--flat--bike-lane construction--flat--crosswalk-plain construction--flat--curb-cut
construction--flat--parking construction--flat--pedestrian-area construction--flat--rail-track
construction--flat--road construction--flat--service-lane construction--flat--sidewalk construction--structure--bridge
construction--structure--building construction--structure--tunnel human--person human--rider--bicyclist
human--rider--motorcyclist human--rider--other-rider marking--crosswalk-zebra marking--general nature--mountain
nature--sand nature--sky nature--snow nature--terrain nature--vegetation nature--water object--banner object--bench
object--bike-rack object--billboard object--catch-basin object--cctv-camera object--fire-hydrant object--junction-box
object--mailbox object--manhole object--phone-booth object--pothole object--street-light object--support--pole
object--support--traffic-sign-frame object--support--utility-pole object--traffic-light object--traffic-sign--back
object--traffic-sign--front object--trash-can object--vehicle--bicycle object--vehicle--boat object--vehicle--bus
object--vehicle--car object--vehicle--caravan object--vehicle--motorcycle object--vehicle--on-rails
object--vehicle--other-vehicle object--vehicle--trailer object--vehicle--truck object--vehicle--wheeled-slow
void--car-mount void--ego-vehicle void--unlabeled"""
_V20 = """animal--bird animal--ground-animal construction--barrier--ambiguous construction--barrier--concrete-block
construction--barrier--curb construction--barrier--fence construction--barrier--guard-rail
construction--barrier--other-barrier construction--barrier--road-median construction--barrier--road-side
construction--barrier--separator construction--barrier--temporary construction--barrier--wall
construction--flat--bike-lane construction--flat--crosswalk-plain construction--flat--curb-cut
construction--flat--driveway construction--flat--parking construction--flat--parking-aisle
construction--flat--pedestrian-area construction--flat--rail-track construction--flat--road
construction--flat--road-shoulder construction--flat--service-lane construction--flat--sidewalk
construction--flat--traffic-island construction--structure--bridge construction--structure--building
construction--structure--garage construction--structure--tunnel human--person--individual
human--person--person-group human--rider--bicyclist human--rider--motorcyclist human--rider--other-rider
marking--continuous--dashed marking--continuous--solid marking--continuous--zigzag marking--discrete--ambiguous
marking--discrete--arrow--left marking--discrete--arrow--other marking--discrete--arrow--right
marking--discrete--arrow--split-left-or-straight marking--discrete--arrow--split-right-or-straight
marking--discrete--arrow--straight marking--discrete--crosswalk-zebra marking--discrete--give-way-row
marking--discrete--give-way-single marking--discrete--hatched--chevron marking--discrete--hatched--diagonal
marking--discrete--other-marking marking--discrete--stop-line marking--discrete--symbol--bicycle
marking--discrete--symbol--other marking--discrete--text marking-only--continuous--dashed
marking-only--discrete--crosswalk-zebra marking-only--discrete--other-marking marking-only--discrete--text
nature--mountain nature--sand nature--sky nature--snow nature--terrain nature--vegetation nature--water
object--banner object--bench object--bike-rack object--catch-basin object--cctv-camera object--fire-hydrant
object--junction-box object--mailbox object--manhole object--parking-meter object--phone-booth object--pothole
object--sign--advertisement object--sign--ambiguous object--sign--back object--sign--information object--sign--other
object--sign--store object--street-light object--support--pole object--support--pole-group
object--support--traffic-sign-frame object--support--utility-pole object--traffic-cone
object--traffic-light--cyclists object--traffic-light--general-horizontal object--traffic-light--general-single
object--traffic-light--general-upright object--traffic-light--other object--traffic-light--pedestrians
object--traffic-sign--ambiguous object--traffic-sign--back object--traffic-sign--direction-back
object--traffic-sign--direction-front object--traffic-sign--front object--traffic-sign--information-parking
object--traffic-sign--temporary-back object--traffic-sign--temporary-front object--trash-can object--vehicle--bicycle
object--vehicle--boat object--vehicle--bus object--vehicle--car object--vehicle--caravan object--vehicle--motorcycle
object--vehicle--on-rails object--vehicle--other-vehicle object--vehicle--trailer object--vehicle--truck
object--vehicle--vehicle-group object--vehicle--wheeled-slow object--water-valve void--car-mount void--dynamic
void--ego-vehicle void--ground void--static void--unlabeled"""
CLASSES: dict[str, tuple[str, ...]] = {"v1.2": tuple(_V12.split()), "v2.0": tuple(_V20.split())}

# Cityscapes class -> the Mapillary classes (both versions) that are that class. Lane and crosswalk markings
# (every `marking--*` / `marking-only--*` class) are painted road, as Cityscapes labels them.
TO_CITYSCAPES: dict[str, tuple[str, ...]] = {
    "road": (
        "construction--flat--road",
        "construction--flat--bike-lane",
        "construction--flat--crosswalk-plain",
        "construction--flat--service-lane",
        "object--manhole",
        "object--pothole",
    ),
    "sidewalk": (
        "construction--flat--sidewalk",
        "construction--barrier--curb",
        "construction--flat--curb-cut",
        "construction--flat--pedestrian-area",
    ),
    "building": ("construction--structure--building", "construction--structure--garage"),
    "wall": ("construction--barrier--wall",),
    "fence": ("construction--barrier--fence",),
    "pole": (
        "object--support--pole",
        "object--support--pole-group",
        "object--support--utility-pole",
        "object--support--traffic-sign-frame",
        "object--street-light",
    ),
    "traffic light": (
        "object--traffic-light",
        "object--traffic-light--cyclists",
        "object--traffic-light--general-horizontal",
        "object--traffic-light--general-single",
        "object--traffic-light--general-upright",
        "object--traffic-light--other",
        "object--traffic-light--pedestrians",
    ),
    "traffic sign": (
        "object--traffic-sign--front",
        "object--traffic-sign--direction-front",
        "object--traffic-sign--temporary-front",
        "object--traffic-sign--information-parking",
    ),
    "vegetation": ("nature--vegetation",),
    "terrain": ("nature--terrain", "nature--sand"),
    "sky": ("nature--sky",),
    "person": ("human--person", "human--person--individual", "human--person--person-group"),
    "rider": ("human--rider--bicyclist", "human--rider--motorcyclist", "human--rider--other-rider"),
    "car": ("object--vehicle--car",),
    "truck": ("object--vehicle--truck",),
    "bus": ("object--vehicle--bus",),
    "train": ("object--vehicle--on-rails",),
    "motorcycle": ("object--vehicle--motorcycle",),
    "bicycle": ("object--vehicle--bicycle",),
}
_TRAIN_ID = {m: CLASS_NAMES.index(cs) for cs, names in TO_CITYSCAPES.items() for m in names}


def train_id(name: str) -> int | None:
    """Cityscapes train id of a Mapillary class name (None: ignored)."""
    if name.startswith(("marking--", "marking-only--")):
        return CLASS_NAMES.index("road")
    return _TRAIN_ID.get(name)


def class_lut(names: tuple[str, ...]) -> np.ndarray:
    """(256,) LUT from label values (positions in `names`) to train ids."""
    mapping = {i: t for i, n in enumerate(names) if (t := train_id(n)) is not None}
    return make_lut(mapping, num_known=len(names))


def read_config(root: Path, version: str) -> tuple[str, ...]:
    """Class names in label-value order from ROOT/config_<version>.json, or the published list if it is absent."""
    path = root / f"config_{version}.json"
    if not path.is_file():
        return CLASSES[version]
    try:
        names = tuple(str(entry["name"]) for entry in json.loads(path.read_text())["labels"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(
            f"{path}: expected Mapillary's config JSON with a 'labels' list of {{'name': ...}} "
            f"entries ({type(err).__name__}: {err})"
        ) from err
    if "construction--flat--road" not in names or len(names) > 255:
        raise DatasetError(
            f"{path}: expected the Mapillary Vistas {version} class list ({len(CLASSES[version])} "
            f"classes, 'construction--flat--road' among them), found {len(names)} names"
        )
    return names


def _version(value) -> str:
    text = str(value).lower().lstrip("v")
    text = {"1.2": "v1.2", "2.0": "v2.0", "2": "v2.0"}.get(text, str(value))
    if text not in VERSIONS:
        raise DatasetError(f"dataset 'mapillary': option version={value!r}: expected one of {list(VERSIONS)}")
    return text


def mapillary(
    root: str | Path,
    split: str = "train",
    version: str = "v1.2",
    labels: bool | None = None,
    size_mismatch: str = "error",
) -> SegDataset:
    """Mapillary Vistas `split` (train/val/test = training/validation/testing) with the `version` label set."""
    root = Path(root).expanduser()
    require_root("mapillary", root, LAYOUT)
    version = _version(version)
    folder = root / SPLITS.get(split, split)
    found = index_folder(folder / "images", (".jpg", ".jpeg", ".png"))
    if not found:
        raise layout_error(
            "mapillary", root, LAYOUT, f"no images for split '{split}': {describe_folder(folder / 'images')}"
        )
    label_dir = folder / version / "labels"
    if version == "v1.2" and not label_dir.is_dir() and (folder / "labels").is_dir():
        label_dir = folder / "labels"  # the v1.2-only release
    names = read_config(root, version)
    keys = sorted(found)
    pairs, reason = match_labels(
        "mapillary", root, LAYOUT, [found[k] for k in keys], [label_dir / f"{k}.png" for k in keys], [label_dir], labels
    )
    return SegDataset(
        pairs,
        name="mapillary",
        root=str(root),
        split=split,
        lut=class_lut(names),
        size_mismatch=size_mismatch,
        unlabelled_reason=reason,
    )
