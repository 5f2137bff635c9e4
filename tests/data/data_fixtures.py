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
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(out))) + chunk(b"IEND", b"")
    )


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
    (root / "classes.yaml").write_text(
        yaml_text or "classes:\n  0: road\n  1: car\n  2: 10\n  3: ignore\n  255: ignore\n"
    )
    masks = []
    for i in range(n):
        save_png(root / "images" / f"img{i}.png", rgb(rng))
        mask = rng.choice(np.array([0, 1, 2, 3, 255]), size=(H, W))
        save_png(root / "masks" / f"img{i}.png", mask)
        masks.append(mask)
    return masks


TRAIN_IDS = np.array(list(range(19)) + [255])


def save_jpg(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path, quality=95)


def make_acdc(root: Path, conditions=("fog", "night"), seed: int = 0) -> dict[str, np.ndarray]:
    """ACDC tree: per condition two train frames and one val frame (labelTrainIds), one test frame (no label)
    and one train_ref frame. Returns {image path: train-id label}."""
    rng = np.random.default_rng(seed)
    labels = {}
    for cond in conditions:
        for split, n in (("train", 2), ("val", 1), ("test", 1), ("train_ref", 1)):
            for k in range(n):
                seq = f"GOPR04{k % 2}{len(cond)}"
                ref = split.endswith("_ref")
                stem = f"{seq}_frame_{k:06d}"
                img = root / "rgb_anon" / cond / split / seq / f"{stem}_rgb{'_ref' if ref else ''}_anon.png"
                save_png(img, rgb(rng))
                if split in ("train", "val"):
                    lbl = rng.choice(TRAIN_IDS, size=(H, W))
                    save_png(root / "gt" / cond / split / seq / f"{stem}_gt_labelTrainIds.png", lbl)
                    save_png(root / "gt" / cond / split / seq / f"{stem}_gt_labelColor.png", rgb(rng))
                    labels[str(img)] = lbl
    return labels


def make_darkzurich(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Dark Zurich tree: train night x2, twilight x1, day x1 (no labels); val night x2 with labelTrainIds; test
    night x1. Returns {image path: train-id label} of the val frames."""
    rng = np.random.default_rng(seed)
    labels = {}
    for split, time, n in (
        ("train", "night", 2),
        ("train", "twilight", 1),
        ("train", "day", 1),
        ("val", "night", 2),
        ("test", "night", 1),
    ):
        for k in range(n):
            seq = f"GOPR03{k}{len(time)}"
            stem = f"{seq}_frame_{k:06d}"
            img = root / "rgb_anon" / split / time / seq / f"{stem}_rgb_anon.png"
            save_png(img, rgb(rng))
            if split == "val":
                lbl = rng.choice(TRAIN_IDS, size=(H, W))
                save_png(root / "gt" / split / time / seq / f"{stem}_gt_labelTrainIds.png", lbl)
                save_png(root / "gt" / split / time / seq / f"{stem}_gt_labelIds.png", np.full((H, W), 7))
                labels[str(img)] = lbl
    return labels


def make_bdd100k(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """BDD100K sem-seg tree: train x2, val x1 (JPEG images, train-id PNG masks), test x1 without masks."""
    rng = np.random.default_rng(seed)
    labels = {}
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for _ in range(n):
            name = f"{rng.integers(16**7):08x}-{rng.integers(16**7):08x}"
            img = root / "images" / "10k" / split / f"{name}.jpg"
            save_jpg(img, rgb(rng))
            if split != "test":
                lbl = rng.choice(TRAIN_IDS, size=(H, W))
                save_png(root / "labels" / "sem_seg" / "masks" / split / f"{name}.png", lbl)
                labels[str(img)] = lbl
    return labels


def make_mapillary(
    root: Path, version: str = "v1.2", names=None, legacy: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """Mapillary Vistas tree (training x2, validation x1, testing x1) with palette-PNG labels of `version` and its
    config JSON (class list `names`, default the published one). `legacy`: v1.2 labels in <split>/labels/.
    Returns {image path: raw label values}."""
    import json

    from udaseg.data.mapillary import CLASSES

    rng = np.random.default_rng(seed)
    names = list(names or CLASSES[version])
    (root).mkdir(parents=True, exist_ok=True)
    (root / f"config_{version}.json").write_text(
        json.dumps(
            {
                "labels": [
                    {"name": n, "readable": n, "color": [0, 0, 0], "instances": False, "evaluate": True} for n in names
                ],
                "version": version,
            }
        )
    )
    labels = {}
    for split, n in (("training", 2), ("validation", 1), ("testing", 1)):
        for k in range(n):
            key = f"{split[:2]}{k}_{rng.integers(10**6)}"
            img = root / split / "images" / f"{key}.jpg"
            save_jpg(img, rgb(rng))
            if split != "testing":
                raw = rng.integers(0, len(names), (H, W))
                label_dir = root / split / "labels" if legacy else root / split / version / "labels"
                save_png(label_dir / f"{key}.png", raw, palette=True)
                labels[str(img)] = raw
    return labels
