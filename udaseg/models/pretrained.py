"""Load pretrained weights from a local file into a model: nothing is downloaded.

Accepted files: ``.pth``/``.pt``/``.bin`` read with ``torch.load(weights_only=True)`` (a raw state dict, or a dict
holding one under ``"state_dict"``, ``"model"`` or ``"teacher"``), and ``.safetensors``. Common wrapper prefixes
(``module.`` from DDP, ``model.``, ``backbone.``, ...) are stripped when that makes more keys match; the classifier is
skipped when its class count differs; other shape mismatches are errors; missing and unexpected keys are logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# Where a checkpoint may keep its state dict, tried in this order.
STATE_DICT_KEYS = ("state_dict", "model", "teacher", "model_state_dict", "net")
# Wrapper prefixes tried on top of the always-stripped "module." (DDP / DataParallel).
CANDIDATE_PREFIXES = ("", "model.", "backbone.", "encoder.", "student.", "teacher.", "segmentor.")
# Key renames for published layouts: AdvEnt/DACS DeepLabV2 calls its ASPP "layer5.conv2d_list".
KEY_RENAMES = (("layer5.conv2d_list.", "classifier.convs."),)


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: loaded / missing / unexpected / skipped (classifier) key names."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def names(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        lines = [f"{self.path}: loaded {len(self.loaded)} tensors"]
        if self.skipped:
            lines.append(f"  skipped (class count differs, left at init): {names(self.skipped)}")
        if self.missing:
            lines.append(f"  missing in file (left at init): {names(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in file (ignored): {names(self.unexpected)}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a flat ``{name: tensor}`` from a ``.safetensors`` or ``torch.save`` file; clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip, safetensors header errors all mean "not a checkpoint"
        raise ValueError(
            f"{path} is not a readable checkpoint (expected a torch.save state dict read with weights_only=True, "
            f"or a .safetensors file): {type(e).__name__}: {e}"
        ) from e
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    """Find the state dict inside a loaded object (raw, or under one of ``STATE_DICT_KEYS``)."""
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict) and obj[key] and _is_state_dict(obj[key]):
                return dict(obj[key])
        if obj and _is_state_dict(obj):
            return dict(obj)
    found = f"dict with keys {list(obj)[:8]}" if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(
        f"{path} holds no state dict: expected {{name: tensor}} or a dict with one under "
        f"{'/'.join(STATE_DICT_KEYS)}; found {found}"
    )


def _is_state_dict(d: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, Tensor) for k, v in d.items())


def _strip(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        while k.startswith("module."):
            k = k[len("module.") :]
        if prefix and k.startswith(prefix):
            k = k[len(prefix) :]
        for old, new in KEY_RENAMES:
            if k.startswith(old):
                k = new + k[len(old) :]
        out[k] = v
    return out


def match_keys(sd: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Strip the wrapper prefix that makes the most file keys match ``model_keys`` (ties: the shortest prefix)."""
    best = max(CANDIDATE_PREFIXES, key=lambda p: (len(model_keys & _strip(sd, p).keys()), -len(p)))
    return _strip(sd, best)


def load_pretrained(model: nn.Module, path: str | Path, strict: bool = False) -> LoadReport:
    """Load weights from the local file ``path`` into ``model``; return (and log) a ``LoadReport``.

    Classifier tensors (``model.classifier``) whose shape differs are skipped (another class count). Any other
    shape mismatch, or a file whose keys match nothing in the model, raises ``ValueError``. With ``strict=True``
    missing keys raise as well.
    """
    own = model.state_dict()
    sd = match_keys(read_state_dict(path), set(own))
    report = LoadReport(str(path))
    to_load, bad = {}, []
    for k, v in sd.items():
        if k not in own:
            report.unexpected.append(k)
        elif own[k].shape == v.shape:
            to_load[k] = v
        elif k.startswith("classifier."):
            report.skipped.append(k)
        else:
            bad.append(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    if bad:
        raise ValueError(
            f"{path}: shapes differ from the model (another architecture or width?): " + "; ".join(bad[:5])
        )
    if not to_load:
        raise ValueError(
            f"{path}: no tensor matches the model {type(model).__name__}; file keys start "
            f"{list(sd)[:5]}, model keys start {list(own)[:5]}"
        )
    report.missing = [k for k in own if k not in to_load and k not in report.skipped]
    if strict and report.missing:
        raise ValueError(report.summary())
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    if report.missing or report.unexpected:
        log.warning(report.summary())
    else:
        log.info(report.summary())
    return report
