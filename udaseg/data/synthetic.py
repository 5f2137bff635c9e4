"""Embedded synthetic benchmark: procedural street scenes in the Cityscapes 19-class taxonomy, two domains.

* `source`: flat, saturated rendering with sharp edges (a "game engine" look), more trucks, fewer people.
* `target`: the same kind of streets photographed differently: class colours hue-rotated, desaturated and
  darker, per-class texture, sensor noise, blur, an illumination gradient with vignetting and haze toward the
  horizon; more people and two-wheelers, fewer trucks, a lower camera pitch, smaller vehicles. Class identity
  stays inferable from shape, layout and relative colour, so adaptation can close much of the gap.

Scenes are deterministic from (seed, domain, split, index) and generated on demand into a cache folder
(`$UDASEG_CACHE/synthetic` or `~/.cache/udaseg/synthetic`) as `<domain>/<split>/{images,labels}/NNNNN.png`
(labels: uint8 train ids) with a `meta.json`; a folder whose meta differs (version, seed, size, count, domain
definition) is regenerated. Tune the gap through `DomainStyle` (appearance) and `SceneStats` (content).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from udaseg.data import synthetic_scene as S
from udaseg.data.base import SegDataset
from udaseg.data.io import DatasetError, write_image, write_label
from udaseg.data.labels import TRAINID_LUT
from udaseg.fileio import write_json

VERSION = 1
DEFAULT_SIZE = (128, 256)  # (H, W)
DEFAULT_COUNTS = {"train": 600, "val": 150}


@dataclass(frozen=True)
class DomainStyle:
    """How a domain renders a scene: the appearance side of the domain gap. Colours are in [0, 1]."""

    hue_shift: float = 0.0  # degrees: rotation of every class colour's hue (YIQ plane)
    saturation: float = 1.0  # factor on every class colour's saturation (< 1 desaturates)
    brightness: float = 1.0  # factor on every class colour
    stuff_jitter: float = 0.03  # std of the per-instance colour variation of stuff (road, building, ...)
    thing_jitter: float = 0.15  # std of the per-instance colour variation of vehicles and clothes
    image_brightness: float = 0.0  # per-image brightness factor drawn from 1 +- this
    image_hue: float = 0.0  # per-image extra hue rotation, degrees, drawn from +- this
    texture: float = 0.0  # amplitude of per-class luminance texture (fine grain + blotches)
    noise: float = 0.0  # std of per-pixel sensor noise
    blur: float = 0.0  # Gaussian blur sigma in pixels at the default 128x256 size (scaled with the size)
    lighting: float = 0.0  # strength of a random illumination gradient and vignetting
    haze: float = 0.0  # haze opacity at the horizon, fading away from it


@dataclass(frozen=True)
class Domain:
    stats: S.SceneStats = field(default_factory=S.SceneStats)
    style: DomainStyle = field(default_factory=DomainStyle)


DOMAINS: dict[str, Domain] = {
    "source": Domain(S.SceneStats(), DomainStyle(saturation=1.35, stuff_jitter=0.03, thing_jitter=0.15)),
    "target": Domain(
        S.SceneStats(
            horizon=(0.4, 0.52),
            cars=3.5,
            parked_cars=2.5,
            trucks=0.3,
            buses=0.35,
            train_prob=0.1,
            persons=4.5,
            riders=1.2,
            bicycles=1.0,
            motorcycles=0.3,
            poles=4.0,
            trees=3.0,
            terrain=0.6,
            vehicle_scale=0.9,
            person_scale=1.1,
        ),
        DomainStyle(
            hue_shift=20.0,
            saturation=0.9,
            brightness=0.95,
            stuff_jitter=0.05,
            thing_jitter=0.15,
            image_brightness=0.15,
            image_hue=10.0,
            texture=0.12,
            noise=0.04,
            blur=0.8,
            lighting=0.35,
            haze=0.35,
        ),
    ),
}

# Natural base colour per train id (RGB 0..255), before a domain's style.
BASE_COLORS = np.array([
    (70, 70, 75), (165, 155, 145), (130, 110, 95), (175, 165, 135), (125, 110, 80), (110, 110, 115),
    (45, 45, 40), (220, 200, 40), (55, 125, 45), (150, 175, 85), (110, 165, 235), (170, 70, 60),
    (60, 90, 160), (40, 70, 170), (170, 170, 175), (210, 180, 50), (190, 70, 50), (150, 40, 40), (150, 40, 120),
], dtype=np.float32) / 255.0  # fmt: skip
THINGS = np.zeros(19, dtype=bool)
THINGS[S.PERSON :] = True
# Per-class texture amplitudes (fine grain, blotches): vegetation is rough, sky has soft clouds, cars are smooth.
TEXTURE = np.array([
    (0.6, 0.4), (0.5, 0.5), (0.3, 0.6), (0.4, 0.5), (0.6, 0.3), (0.2, 0.2), (0.1, 0.1), (0.1, 0.1), (1.0, 1.0),
    (0.8, 0.8), (0.0, 0.7), (0.3, 0.3), (0.3, 0.3), (0.15, 0.2), (0.2, 0.3), (0.2, 0.3), (0.2, 0.3), (0.2, 0.2),
    (0.2, 0.2),
], dtype=np.float32)  # fmt: skip

_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32)
_RGB = np.linalg.inv(_YIQ).astype(np.float32)


def _restyle(colors: np.ndarray, hue_deg: float, saturation: float, brightness: float) -> np.ndarray:
    """Rotate hue, scale chroma and brightness of (N, 3) RGB colours in YIQ space."""
    a = np.deg2rad(hue_deg)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]], dtype=np.float32)
    scale = np.diag([brightness, brightness * saturation, brightness * saturation]).astype(np.float32)
    return np.clip(colors @ (_RGB @ scale @ rot @ _YIQ).T, 0.0, 1.0)


def _instance_colors(c: S.Canvas, style: DomainStyle, class_rgb: np.ndarray) -> np.ndarray:
    """(N, 3) colour per instance from its class, part kind and random vector."""
    cls, part, noise = np.array(c.classes), np.array(c.parts), np.stack(c.noise).astype(np.float32)
    jitter = np.where(THINGS[cls], style.thing_jitter, style.stuff_jitter)[:, None]
    col = np.clip(class_rgb[cls] + jitter * noise, 0.0, 1.0)
    grey = class_rgb[cls].mean(axis=1, keepdims=True)
    col = np.where((part == S.DARK)[:, None], 0.3 * col + 0.05, col)
    col = np.where((part == S.GLASS)[:, None], 0.35 * col + 0.65 * np.array([0.2, 0.27, 0.33]) * (grey + 0.5), col)
    col = np.where((part == S.MARKING)[:, None], np.array([0.9, 0.9, 0.88]), col)
    col = np.where((part == S.SKIN)[:, None], np.array([0.86, 0.7, 0.58]) * (0.85 + 0.1 * noise[:, :1]), col)
    lamp = np.array([[0.85, 0.15, 0.1], [0.95, 0.75, 0.1], [0.15, 0.8, 0.3]])[np.argmax(noise, axis=1)]
    col = np.where((part == S.LIGHTPART)[:, None], lamp, col)
    return np.clip(col, 0.0, 1.0).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """(H, W) value noise: a random grid every `cell` pixels, bilinearly interpolated."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    y = (np.arange(h, dtype=np.float32) + 0.5) / cell
    x = (np.arange(w, dtype=np.float32) + 0.5) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bot = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (H, W, 3), edge padding."""
    r = max(1, int(np.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)  # (2r+1,)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        p = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        img = sum(k[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(2 * r + 1))
    return img


def _photometric(
    img: np.ndarray, label: np.ndarray, hz: float, style: DomainStyle, rng: np.random.Generator
) -> np.ndarray:
    """Texture, lighting, haze, blur and sensor noise on an (H, W, 3) float image."""
    h, w = label.shape
    scale = w / DEFAULT_SIZE[1]
    if style.texture > 0:
        amp = TEXTURE[np.minimum(label, 18)] * style.texture  # (H, W, 2)
        fine = rng.standard_normal((h, w), dtype=np.float32)
        blotch = _smooth_noise(rng, h, w, max(2, int(8 * scale)))
        img = img * (1.0 + amp[..., 0:1] * fine[..., None] + amp[..., 1:2] * blotch[..., None])
    if style.lighting > 0:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        yn, xn = yy / h - 0.5, xx / w - 0.5
        gy, gx = rng.uniform(-1, 1, size=2)
        gain = 1.0 + style.lighting * (gx * xn + gy * yn) - style.lighting * 0.8 * (xn**2 + yn**2)
        img = img * gain[..., None].astype(np.float32)
    if style.haze > 0:
        rows = np.arange(h, dtype=np.float32)[:, None, None]
        weight = style.haze * np.exp(-np.abs(rows - hz) / (0.12 * h))  # (H, 1, 1)
        fog = np.array([0.78, 0.8, 0.82], dtype=np.float32) * np.float32(rng.uniform(0.85, 1.05))
        img = img * (1 - weight) + fog * weight
    if style.blur > 0:
        img = _blur(img, style.blur * scale)
    if style.noise > 0:
        img = img + style.noise * rng.standard_normal(img.shape, dtype=np.float32)
    return img


def render_scene(
    seed: int, domain: str | Domain, split: str, index: int, size: tuple[int, int] = DEFAULT_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ((H, W, 3) uint8 image, (H, W) uint8 train-id label), deterministic from the arguments."""
    dom, name = (DOMAINS[domain], domain) if isinstance(domain, str) else (domain, "custom")
    key = [seed, zlib.crc32(name.encode()), zlib.crc32(split.encode()), index]
    rng = np.random.default_rng(key)
    canvas = S.layout(rng, dom.stats, *size)
    style = dom.style
    hue = style.hue_shift + rng.uniform(-1, 1) * style.image_hue
    bright = style.brightness * (1.0 + rng.uniform(-1, 1) * style.image_brightness)
    class_rgb = _restyle(BASE_COLORS, hue, style.saturation, bright)
    img = _instance_colors(canvas, style, class_rgb)[canvas.inst]  # (H, W, 3)
    hz = float(np.argmax((canvas.label != S.SKY).any(axis=1)))  # first row with ground or objects
    img = _photometric(img, canvas.label, hz, style, rng)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), canvas.label


def default_cache() -> Path:
    """`$UDASEG_CACHE/synthetic` or `~/.cache/udaseg/synthetic`."""
    base = os.environ.get("UDASEG_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "udaseg") / "synthetic"


def _meta(domain: str, dom: Domain, split: str, count: int, size: tuple[int, int], seed: int) -> dict:
    definition = json.dumps({"stats": asdict(dom.stats), "style": asdict(dom.style)}, sort_keys=True)
    return {
        "version": VERSION,
        "domain": domain,
        "split": split,
        "count": count,
        "size": list(size),
        "seed": seed,
        "definition": hashlib.sha1(definition.encode()).hexdigest()[:16],
    }


def _write_range(
    out: str, seed: int, domain: str | Domain, split: str, start: int, stop: int, size: tuple[int, int]
) -> None:
    for i in range(start, stop):
        image, label = render_scene(seed, domain, split, i, size)
        # the whole folder is renamed into place when complete, so single files need no atomic write
        write_image(Path(out) / "images" / f"{i:05d}.png", image, atomic=False)
        write_label(Path(out) / "labels" / f"{i:05d}.png", label, atomic=False)


def generate(
    root: str | Path,
    domain: str,
    split: str,
    count: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    workers: int | None = None,
    dom: Domain | None = None,
) -> Path:
    """Make sure `root/<domain>/<split>-<H>x<W>-n<count>-seed<seed>` holds `count` scenes matching the meta
    (version and domain definition included); generate them if not.

    Generation writes to a temporary folder and renames it, so concurrent processes (DDP ranks) never see a
    half-written split. Returns the split folder.
    """
    dom = dom or DOMAINS.get(domain)
    if dom is None:
        raise ValueError(f"unknown synthetic domain {domain!r}: expected one of {sorted(DOMAINS)}")
    # one folder per setting: runs with other counts or sizes (tests, benchmarks) never replace each other's files
    out = Path(root).expanduser() / domain / f"{split}-{size[0]}x{size[1]}-n{count}-seed{seed}"
    meta = _meta(domain, dom, split, count, size, seed)
    if _meta_matches(out, meta):
        return out
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "labels").mkdir()
    target = domain if domain in DOMAINS and dom == DOMAINS[domain] else dom
    workers = min(workers or min(os.cpu_count() or 1, 8), max(1, count // 50))
    if multiprocessing.current_process().daemon:  # e.g. inside a DataLoader worker: no child processes allowed
        workers = 1
    chunks = [(i, min(i + 50, count)) for i in range(0, count, 50)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for f in [pool.submit(_write_range, str(tmp), seed, target, split, a, b, size) for a, b in chunks]:
                f.result()
    else:
        _write_range(str(tmp), seed, target, split, 0, count, size)
    write_json(tmp / "meta.json", meta, indent=1)
    if _meta_matches(out, meta):  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return out
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _meta_matches(out: Path, meta: dict) -> bool:
    try:
        return json.loads((out / "meta.json").read_text()) == meta
    except (OSError, ValueError):
        return False


def synthetic(
    root: str | Path | None = None,
    split: str = "train",
    domain: str = "target",
    count: int | dict[str, int] | None = None,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    workers: int | None = None,
) -> SegDataset:
    """The synthetic benchmark's `domain` (source/target) `split` (train/val), generated on first use.

    `count`: images in this split, or a {split: count} dict (defaults: train 600, val 150); `size`: (H, W);
    `seed`: scene seed; `workers`: generation processes (default: CPU count, at most 8).
    """
    if split not in DEFAULT_COUNTS:
        raise DatasetError(f"synthetic split {split!r} does not exist: expected one of {sorted(DEFAULT_COUNTS)}")
    if domain not in DOMAINS:
        raise DatasetError(f"synthetic domain {domain!r} does not exist: expected one of {sorted(DOMAINS)}")
    root = Path(root).expanduser() if root else default_cache()
    counts = dict(DEFAULT_COUNTS, **count) if isinstance(count, dict) else DEFAULT_COUNTS
    count = counts[split] if count is None or isinstance(count, dict) else int(count)
    size = (int(size[0]), int(size[1]))
    out = generate(root, domain, split, count, size, seed, workers)
    files = [(str(out / "images" / f"{i:05d}.png"), str(out / "labels" / f"{i:05d}.png")) for i in range(count)]
    return SegDataset(files, name=f"synthetic_{domain}", root=str(root), split=split, lut=TRAINID_LUT)
