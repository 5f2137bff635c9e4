"""Typed configuration: dataclasses with commented defaults, a YAML file per experiment, `--set key=value` overrides.

There is no inheritance chain: a YAML file states the values that differ from the defaults below, and the fully
resolved config is written to the run folder and into every checkpoint. Method options live under `methods.<name>`
and are checked against that method's own dataclass (`udaseg.methods`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from udaseg.fileio import UserError, write_text


class ConfigError(UserError, ValueError):
    """A configuration value or key that does not exist, has the wrong type or is out of range (names the key)."""


@dataclass
class DataConfig:
    source: str = "synthetic"  # NAME[:ROOT] of the labelled source: gta5, synthia, cityscapes, folder, synthetic
    target: str = "synthetic"  # NAME[:ROOT] of the unlabelled target domain (its labels are never read in training)
    val: str = ""  # NAME[:ROOT] to evaluate on; empty = the target dataset
    val_split: str = "val"  # split of `val` used for evaluation
    protocol: int = 19  # classes in the reported mIoU: 19, 16 (SYNTHIA) or 13
    crop: list[int] = field(default_factory=lambda: [128, 256])  # training crop (H, W)
    source_resize: list[int] = field(default_factory=list)  # resize source images to (H, W) before cropping
    target_resize: list[int] = field(default_factory=list)  # same for target images; empty = keep
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.25])  # random scale before the crop
    batch_size: int = 4  # images per domain per step (per process under DDP)
    workers: int = 1  # DataLoader workers per domain (decoding 128x256 PNGs is cheap; cores go to the model)
    rcs: bool = True  # rare-class sampling of source images (DAFormer)
    rcs_temperature: float = 0.01  # T in P(c) = softmax((1 - f_c) / T)
    rcs_min_pixels: int = 50  # an image counts for class c when it has more pixels of c (3000 at 1280x720)
    synthetic: dict[str, Any] = field(default_factory=dict)  # options of the synthetic benchmark: count, size, seed
    # Options of one loader, used when that dataset is a source, target or val (docs/datasets.md, recordings.md):
    acdc: dict[str, Any] = field(default_factory=dict)  # conditions: [fog, night, rain, snow]
    darkzurich: dict[str, Any] = field(default_factory=dict)  # times: [night, twilight, day]
    mapillary: dict[str, Any] = field(default_factory=dict)  # version: v1.2 or v2.0
    rosbag: dict[str, Any] = field(default_factory=dict)  # every: N frames, min_interval_s: seconds
    video: dict[str, Any] = field(default_factory=dict)  # every: N frames, min_interval_s: seconds


@dataclass
class ModelConfig:
    name: str = "compact"  # a name of udaseg.models.list_models()
    pretrained: str = ""  # local .pth / .safetensors backbone weights; nothing is downloaded
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments of the model function


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw (DAFormer) or sgd (DeepLabV2 papers)
    lr: float = 1e-3  # backbone learning rate; heads get lr * head_lr_mult
    head_lr_mult: float = 10.0  # DAFormer convention
    weight_decay: float = 0.01
    momentum: float = 0.9  # sgd only
    warmup_iters: int = 100  # linear learning-rate warm-up
    poly_power: float = 1.0  # poly decay to zero at the last iteration
    grad_clip: float = 10.0  # max gradient norm; 0 disables


@dataclass
class TrainConfig:
    method: str = "self_training"  # plug-ins joined by '+', e.g. dida+cpsl; source_only trains on source alone
    warmup: str = "source_only"  # stage before adaptation: source_only or diga (symmetric distillation)
    warmup_iters: int = 1200  # iterations of the warm-up stage (0 = adapt from the start)
    init: str = ""  # start from this checkpoint's weights (e.g. a warm-up run's final.pt) instead of scratch
    iters: int = 1200  # iterations of the adaptation stage
    ema: float = 0.99  # teacher momentum (0.999 in the papers' 40k-iteration schedules)
    eval_every: int = 400  # evaluate the teacher on the target val set every N iterations (0 = only at the end)
    eval_max_images: int = 0  # cap the periodic evaluation (0 = whole val set); the final one is always whole
    ckpt_every: int = 400  # write last.pt every N iterations
    log_every: int = 20  # metrics.jsonl row every N iterations
    seed: int = 0
    amp: bool = True  # bf16/fp16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    kernels: str = "auto"  # udaseg.kernels implementation: auto, triton or torch
    device: str = "auto"  # auto, cpu, cuda
    threads: int = 0  # torch CPU threads (0 = torch default)
    samples: int = 4  # target images shown in samples.png
    evaluate: bool = True  # evaluate on data.val (needs its labels); false (--no-eval): no mIoU, no labelled val


@dataclass
class MonitorConfig:
    """Pseudo-label diagnostics, label-free checkpoint selection and the collapse guard (docs/trust.md)."""

    enabled: bool = True  # pseudo rows in metrics.jsonl, pseudo_labels.png, best_unsupervised.pt, collapse warnings
    probe_images: int = 8  # fixed target train images (evenly spaced) the teacher is scored and compared on
    probe_size: list[int] = field(default_factory=list)  # resize them to (H, W); empty = data.target_resize or as is
    criterion: str = "agreement"  # label-free score that picks best_unsupervised.pt: agreement, im, snd, entropy
    confident: float = 0.968  # confidence a pseudo-label counts as "confident" at in the diagnostics (DAFormer)
    collapse_ratio: float = 0.4  # warn when the pseudo-labels' effective class count < this x the source labels'
    vanish_ratio: float = 0.1  # a class is named as vanished when its pseudo-label share < this x its source share
    coverage_drop: float = 0.5  # warn when the pseudo-labelled share of pixels < this x the first window's
    patience: int = 3  # warn when the label-free score fell at this many evaluations in a row ...
    min_drop: float = 0.02  # ... and is more than this below its best
    on_collapse: str = "warn"  # warn; stop (end the run there); rollback (end it with best_unsupervised.pt's weights)


@dataclass
class AugmentConfig:
    """Photometric/style randomisation of the source view (all off by default; udaseg/data/photometric.py)."""

    jitter: float = 0.0  # colour jitter strength (brightness/contrast/saturation factors in 1 +- s, hue +- s turns)
    p_jitter: float = 0.8  # probability of the jitter per image
    grayscale: float = 0.0  # probability of a grayscale image
    blur: float = 0.0  # probability of a Gaussian blur, sigma in [0.1, 2.0] pixels
    channel_shuffle: float = 0.0  # probability of a random permutation of the RGB channels
    fda: float = 0.0  # probability of FDA amplitude mixing with a random target image (Yang & Soatto 2020)
    fda_beta: float = 0.01  # FDA's low-frequency window, as a fraction of the image's smaller side


@dataclass
class FeatureDistanceConfig:
    """DAFormer's ImageNet feature distance (udaseg/engine/feature_distance.py): keeps the student's deepest encoder
    features on source "thing" pixels near those of the frozen pretrained encoder. Off at weight 0."""

    weight: float = 0.0  # lambda_FD (DAFormer: 0.005); > 0 needs model.pretrained
    classes: list[int] = field(default_factory=lambda: [6, 7, 11, 12, 13, 14, 15, 16, 17, 18])  # DAFormer's things
    min_ratio: float = 0.75  # an encoder cell counts for a class when >= this share of its pixels has it


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    feature_distance: FeatureDistanceConfig = field(default_factory=FeatureDistanceConfig)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method options: methods.dida.tau=0.1


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from nested dicts, checking every key and coercing scalar types."""
    return _build(Config, data or {}, source)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, found {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(names)}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{where}.{name}")
        else:
            values[name] = coerce(value, hint, f"{where}.{name}")
    return cls(**values)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint, converting int->float and str->number where unambiguous."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is none of {hint}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        (arg,) = typing.get_args(hint) or (Any,)
        return [coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return dict(value)
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, found {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, found {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        if isinstance(value, int) or (hint is float and isinstance(value, float)):
            return hint(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected {hint.__name__}, found {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, found {value!r}")
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=3e-4' -> (['optim', 'lr'], 0.0003); the value is read as YAML ('[1, 2]', 'true', 'null')."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({e})") from e
    if isinstance(value, str) and _is_number(value):
        value = float(value)  # YAML 1.1 reads '3e-4' as a string
    return key.strip().split("."), value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- --set overrides, then checked."""
    data: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
    data = apply_overrides(data, overrides or [])
    return from_dict(data, str(path) if path else "config")


def save_config(cfg: Config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------- checks
def _pair(value: list, where: str, kind: type = int, allow_empty: bool = False) -> list[str]:
    if allow_empty and not value:
        return []
    if len(value) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in value):
        what = "[] or " if allow_empty else ""
        return [f"{where}={value}: expected {what}two positive {kind.__name__}s [H, W]"]
    return []


def validate(cfg: Config) -> Config:
    """Check values a type hint cannot: ranges, list lengths, names of models and warm-ups. Raises one
    ConfigError listing every bad key (name=value: what is expected); returns cfg."""
    d, t, o = cfg.data, cfg.train, cfg.optim
    bad = _pair(d.crop, "data.crop") + _pair(d.source_resize, "data.source_resize", allow_empty=True)
    bad += _pair(d.target_resize, "data.target_resize", allow_empty=True)
    if len(d.scale_range) != 2 or not 0 < d.scale_range[0] <= d.scale_range[1]:
        bad.append(f"data.scale_range={d.scale_range}: expected [low, high] with 0 < low <= high")
    at_least = {"data.batch_size": (d.batch_size, 1), "data.workers": (d.workers, 0), "train.iters": (t.iters, 0),
                "train.warmup_iters": (t.warmup_iters, 0), "train.log_every": (t.log_every, 1),
                "train.eval_every": (t.eval_every, 0), "train.eval_max_images": (t.eval_max_images, 0),
                "train.ckpt_every": (t.ckpt_every, 0), "train.threads": (t.threads, 0),
                "train.samples": (t.samples, 0), "optim.warmup_iters": (o.warmup_iters, 0),
                "data.rcs_min_pixels": (d.rcs_min_pixels, 0)}  # fmt: skip
    bad += [f"{k}={v}: expected an integer >= {low}" for k, (v, low) in at_least.items() if v < low]
    if t.iters + t.warmup_iters == 0:
        bad.append("train.iters=0 and train.warmup_iters=0: nothing to train")
    if not (o.lr > 0 and math.isfinite(o.lr)):
        bad.append(f"optim.lr={o.lr}: expected a positive number")
    if not 0 <= t.ema < 1:
        bad.append(f"train.ema={t.ema}: expected 0 <= ema < 1")
    if d.rcs and not d.rcs_temperature > 0:
        bad.append(f"data.rcs_temperature={d.rcs_temperature}: expected a positive number")
    choices = {"data.protocol": (d.protocol, (19, 16, 13)), "optim.optimizer": (o.optimizer, ("adamw", "sgd")),
               "train.kernels": (t.kernels, ("auto", "triton", "torch"))}  # fmt: skip
    bad += [f"{k}={v!r}: expected one of {', '.join(map(str, c))}" for k, (v, c) in choices.items() if v not in c]
    if not (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:")):
        bad.append(f"train.device={t.device!r}: expected auto, cpu, cuda or cuda:N")
    bad += _names(cfg) + _monitor_and_augment(cfg)
    if bad:
        raise ConfigError("bad config value" + ("s" if len(bad) > 1 else "") + ": " + "; ".join(bad))
    return cfg


def _monitor_and_augment(cfg: Config) -> list[str]:
    from udaseg.data.photometric import check as check_augment
    from udaseg.engine.monitor import ON_COLLAPSE
    from udaseg.engine.selection import CRITERIA

    m, bad = cfg.monitor, check_augment(cfg.augment)
    choices = {"monitor.criterion": (m.criterion, CRITERIA), "monitor.on_collapse": (m.on_collapse, ON_COLLAPSE)}
    bad += [f"{k}={v!r}: expected one of {', '.join(c)}" for k, (v, c) in choices.items() if v not in c]
    if m.probe_images < 1:
        bad.append(f"monitor.probe_images={m.probe_images}: expected an integer >= 1")
    fd = cfg.feature_distance
    if not fd.weight >= 0:
        bad.append(f"feature_distance.weight={fd.weight}: expected a number >= 0 (0 = off; DAFormer: 0.005)")
    elif fd.weight > 0 and not cfg.model.pretrained:
        bad.append(
            f"feature_distance.weight={fd.weight} needs model.pretrained: the distance is to the frozen pretrained "
            "(ImageNet) encoder, and there is none without it"
        )
    if not 0 < fd.min_ratio <= 1:
        bad.append(f"feature_distance.min_ratio={fd.min_ratio}: expected a share in (0, 1]")
    if not fd.classes or any(not isinstance(c, int) or not 0 <= c < 255 for c in fd.classes):
        bad.append(f"feature_distance.classes={fd.classes}: expected a non-empty list of class ids (0-254)")
    return bad


def _names(cfg: Config) -> list[str]:
    """Model and warm-up names, checked against their registries (imported here: the registries import config)."""
    from udaseg.methods import REGISTRY, resolve_names, resolve_warmup
    from udaseg.models import list_models

    bad = []
    if cfg.model.name not in list_models():
        bad.append(f"model.name={cfg.model.name!r}: no such model; available: {', '.join(list_models())}")
    for key, check in (("train.warmup", resolve_warmup), ("train.method", resolve_names)):
        try:
            check(getattr(cfg.train, key.split(".")[1]))
        except ValueError as e:
            bad.append(str(e) if key in str(e) else f"{key}: {e}")
    bad += [
        f"methods.{name}: no such method; available: {', '.join(sorted(REGISTRY))}"
        for name in sorted(set(cfg.methods) - set(REGISTRY))
    ]
    return bad


# Keys a resumed run may change: where and how fast it runs, how often it reports; not what it computes.
RESUME_FREE_KEYS = (
    "train.device",
    "train.threads",
    "train.kernels",
    "data.workers",
    "train.eval_every",
    "train.eval_max_images",
    "train.ckpt_every",
    "train.log_every",
    "train.samples",
)


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """[(dotted key, old value, new value)] where two config dicts differ (a key missing on one side: None)."""
    diffs = []
    for key in sorted(set(old) | set(new), key=str):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_diff(a, b, name + ".")
        elif a != b:
            diffs.append((name, a, b))
    return diffs


def resume_diff(run_config: dict[str, Any], cfg: Config) -> tuple[list[str], list[str]]:
    """(keys that change the computation, keys that may change) between a run's saved config and `cfg`.

    The saved config is read through from_dict when it can be, so keys added since with their default do not count.
    """
    try:
        old = to_dict(from_dict(run_config, "the run's config"))
    except ConfigError:
        old = run_config
    diffs = config_diff(old, to_dict(cfg))
    text = [f"{k}: {a!r} in the run, {b!r} now" for k, a, b in diffs]
    free = [k in RESUME_FREE_KEYS for k, _, _ in diffs]
    return [s for s, f in zip(text, free) if not f], [s for s, f in zip(text, free) if f]


def method_options(cls: type, options: dict[str, Any], name: str) -> Any:
    """Instantiate a method's option dataclass from the `methods.<name>` section."""
    return _build(cls, options or {}, f"methods.{name}")
