"""Writers for tiny datasets in the real on-disk formats (GTA5, SYNTHIA, Cityscapes, folder + YAML)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from udaseg.data.labels import CITYSCAPES_ID_TO_TRAINID, SYNTHIA_ID_TO_TRAINID

H, W = 12, 20
CS_IDS = np.array(sorted(CITYSCAPES_ID_TO_TRAINID) + [0, 1, 4, 9, 255])  # with ignored ids
SYN_IDS = np.array(sorted(SYNTHIA_ID_TO_TRAINID) + [0, 13, 22])


def rgb(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_png(path: Path, array: np.ndarray, palette: bool = False) -> None:
    """8-bit PNG; `palette=True` writes a mode-P file like GTA5's labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    im = Image.fromarray(array)
    if palette:
        im = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def png16(array: np.ndarray, filters: tuple[int, ...] = (0,)) -> bytes:
    """A 16-bit PNG of (H, W, C) data, C in 1..4, with rows cycling through the given filter types (0..4)."""
    array = np.asarray(array, dtype=np.uint16)
    array = array[:, :, None] if array.ndim == 2 else array
    h, w, c = array.shape
    bpp = 2 * c
    rows = array.astype(">u2").reshape(h, w * c).view(np.uint8).astype(np.int64)
    out, prev = [], np.zeros(w * bpp, dtype=np.int64)
    for r in range(h):
        cur, kind = rows[r], filters[r % len(filters)]
        a = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        if kind == 4:
            p = a + prev - up_left
            pa, pb, pc = np.abs(p - a), np.abs(p - prev), np.abs(p - up_left)
            pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, prev, up_left))
        else:
            pred = [np.zeros_like(cur), a, prev, (a + prev) // 2][kind]
        out.append(bytes([kind]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
        prev = cur

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(out)))
            + chunk(b"IEND", b""))


def make_gta5(root: Path, n: int = 3, seed: int = 0) -> list[np.ndarray]:
    """GTA5 layout; returns the raw id labels."""
    rng = np.random.default_rng(seed)
    labels = []
    for i in range(n):
        save_png(root / "images" / f"{i:05d}.png", rgb(rng))
        ids = rng.choice(CS_IDS, size=(H, W))
        save_png(root / "labels" / f"{i:05d}.png", ids, palette=True)
        labels.append(ids)
    return labels


def make_synthia(root: Path, n: int = 3, seed: int = 0, channels: int = 3) -> list[np.ndarray]:
    """SYNTHIA RAND-CITYSCAPES layout, 16-bit labels: class id in channel 0, instance id in channel 1."""
    rng = np.random.default_rng(seed)
    labels = []
    for i in range(n):
        save_png(root / "RGB" / f"{i:07d}.png", rgb(rng))
        ids = rng.choice(SYN_IDS, size=(H, W))
        data = np.zeros((H, W, channels), dtype=np.uint16)
        data[..., 0] = ids
        if channels > 1:
            data[..., 1] = rng.integers(0, 4000, (H, W))  # instance ids use the high byte too
        (root / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
        (root / "GT" / "LABELS" / f"{i:07d}.png").write_bytes(png16(data, filters=(0, 1, 2, 3, 4)))
        labels.append(ids)
    return labels


def make_cityscapes(root: Path, split: str = "val", train_ids: bool = False, seed: int = 0) -> list[np.ndarray]:
    """Cityscapes tree with two cities; labelIds files, plus labelTrainIds ones when `train_ids`."""
    rng = np.random.default_rng(seed)
    from udaseg.data.labels import CITYSCAPES_LUT

    labels = []
    for city, n in (("aachen", 2), ("bonn", 1)):
        for k in range(n):
            stem = f"{city}_{k:06d}_000019"
            save_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb(rng))
            ids = rng.choice(CS_IDS, size=(H, W))
            gt = root / "gtFine" / split / city
            save_png(gt / f"{stem}_gtFine_labelIds.png", ids)
            save_png(gt / f"{stem}_gtFine_color.png", rgb(rng))
            if train_ids:
                save_png(gt / f"{stem}_gtFine_labelTrainIds.png", CITYSCAPES_LUT[ids].astype(np.uint8))
            labels.append(ids)
    return labels


def make_folder(root: Path, n: int = 3, seed: int = 0, yaml_text: str | None = None) -> list[np.ndarray]:
    """Images + masks + classes.yaml mapping mask values 0..3 and 255."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml_text or "classes:\n  0: road\n  1: car\n  2: 10\n  3: ignore\n"
                                       "  255: ignore\n")
    masks = []
    for i in range(n):
        save_png(root / "images" / f"img{i}.png", rgb(rng))
        mask = rng.choice(np.array([0, 1, 2, 3, 255]), size=(H, W))
        save_png(root / "masks" / f"img{i}.png", mask)
        masks.append(mask)
    return masks
