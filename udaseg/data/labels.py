"""Class taxonomy (Cityscapes 19 train ids), palettes, id -> train-id lookup tables and evaluation protocols.

Every dataset maps its raw label values to the 19 Cityscapes train ids with a lookup table (LUT): a small int16
array indexed by the raw value, holding the train id, `IGNORE_INDEX` for values that are known but not evaluated
(Cityscapes "unlabeled", "parking", ...), or `UNKNOWN` (-1) for values the format does not define. Applying a LUT
is one `np.take`, never a per-pixel Python loop.

Sources: Cityscapes `labels.py` (cityscapesScripts), DAFormer `tools/convert_datasets/{gta,synthia}.py`,
the 16/13-class SYNTHIA protocols as index sets (ProDA, DAFormer). ACDC, Dark Zurich and BDD100K store Cityscapes
train ids already; Mapillary Vistas' mapping is in `mapillary.py` (docs/datasets.md explains each table).
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = 255
"""Label value that losses and metrics ignore."""

UNKNOWN = -1
"""LUT entry for a raw value the dataset format does not define (mapped to IGNORE_INDEX with a warning)."""

NUM_CLASSES = 19

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# Official Cityscapes colours, indexed by train id.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# Evaluation protocols: train-id subsets. 16 and 13 are the SYNTHIA protocols (ProDA / DAFormer index sets).
PROTOCOLS: dict[int, tuple[int, ...]] = {
    19: tuple(range(19)),
    16: (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
    13: (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
}

# Cityscapes labelId -> trainId (labelIds 0..33; -1 "license plate" never appears in labelIds PNGs).
# labelIds without a train id (unlabeled, ego vehicle, ground, parking, rail track, guard rail, bridge, tunnel,
# polegroup, caravan, trailer, ...) are known values and map to IGNORE_INDEX.
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_NUM_IDS = 34

# GTA5 labels use the Cityscapes labelIds.
GTA5_ID_TO_TRAINID = CITYSCAPES_ID_TO_TRAINID

# SYNTHIA RAND-CITYSCAPES class id (first channel of GT/LABELS) -> trainId (DAFormer's table). Terrain (16),
# truck (18) and train (20) are defined but never occur in the data. Ids 0 void, 13 parking-slot, 14 road-work,
# 22 lanemarking are known and ignored.
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15,
    20: 16, 12: 17, 11: 18,
}  # fmt: skip
SYNTHIA_NUM_IDS = 23


def make_lut(mapping: dict[int, int], num_known: int, size: int = 256) -> np.ndarray:
    """Build an int16 LUT of `size` entries.

    Args:
        mapping: raw value -> train id.
        num_known: raw values `0..num_known-1` are defined by the format; those not in `mapping` map to
            IGNORE_INDEX. Values `>= num_known` are UNKNOWN, except IGNORE_INDEX (255) itself, which every
            format may use for "no label".
        size: number of entries (256 for 8-bit labels, 65536 for 16-bit ones).
    Returns:
        (size,) int16 array.
    """
    lut = np.full(size, UNKNOWN, dtype=np.int16)
    lut[: min(num_known, size)] = IGNORE_INDEX
    if size > IGNORE_INDEX:
        lut[IGNORE_INDEX] = IGNORE_INDEX
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


def identity_lut(num_classes: int = NUM_CLASSES, size: int = 256) -> np.ndarray:
    """LUT for labels already stored as train ids (`0..num_classes-1` and 255)."""
    return make_lut({i: i for i in range(num_classes)}, num_known=num_classes, size=size)


CITYSCAPES_LUT = make_lut(CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_NUM_IDS)
GTA5_LUT = CITYSCAPES_LUT
SYNTHIA_LUT = make_lut(SYNTHIA_ID_TO_TRAINID, SYNTHIA_NUM_IDS, size=65536)
TRAINID_LUT = identity_lut()


def apply_lut(raw: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, int, list[int]]:
    """Map raw label values to train ids.

    Args:
        raw: (H, W) non-negative integer label.
        lut: (N,) int16 table from `make_lut`.
    Returns:
        (labels (H, W) uint8 with unknown values set to IGNORE_INDEX, number of unknown pixels,
         sorted list of the unknown raw values (at most 20)).
    """
    raw = np.asarray(raw)
    too_big = raw >= len(lut)
    index = np.where(too_big, 0, raw) if too_big.any() else raw
    mapped = np.take(lut, index)  # (H, W) int16
    unknown = (mapped == UNKNOWN) | too_big
    n_unknown = int(unknown.sum())
    values: list[int] = []
    if n_unknown:
        values = [int(v) for v in np.unique(raw[unknown])[:20]]
        mapped = np.where(unknown, IGNORE_INDEX, mapped)
    return mapped.astype(np.uint8), n_unknown, values


def palette_array(num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(256, 3) uint8 colour table: the palette for train ids, black for everything else (ignore included)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: min(num_classes, len(PALETTE))] = np.asarray(PALETTE[:num_classes], dtype=np.uint8)
    return table


def colorize(label: np.ndarray | torch.Tensor) -> np.ndarray:
    """Colour a train-id label with the Cityscapes palette.

    Args:
        label: (..., H, W) integer train ids (255 and out-of-range values are drawn black).
    Returns:
        (..., H, W, 3) uint8 RGB.
    """
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu().numpy()
    label = np.asarray(label).astype(np.int64)
    label = np.where((label < 0) | (label > 255), 255, label)
    return palette_array()[label]


def protocol_classes(protocol: int) -> tuple[int, ...]:
    """Train ids evaluated under a protocol (19, 16 or 13 classes)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[protocol]
