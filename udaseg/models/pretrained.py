"""Load pretrained weights from a local file into a model: nothing is downloaded.

Accepted files: ``.pth``/``.pt``/``.bin`` read with ``torch.load(weights_only=True)`` (a raw state dict, or a dict
holding one under ``"state_dict"``, ``"model"`` or ``"teacher"``), and ``.safetensors``. Common wrapper prefixes
(``module.`` from DDP, ``model.``, ``backbone.``, ...) are stripped when that makes more keys match; the classifier is
skipped when its class count differs; other shape mismatches are errors; missing and unexpected keys are logged.

MiT models (``daformer_mit*``, ``segformer_mit*``) also read the layouts MiT weights are published in: the official
SegFormer ImageNet ``mit_b*.pth``, mmseg/DAFormer segmentor checkpoints and Hugging Face ``segformer`` files
(``convert_mit``); a file of another MiT variant is refused with both variants named.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from udaseg.fileio import UserError

log = logging.getLogger(__name__)


class PretrainedError(UserError, ValueError):
    """A weights file that cannot go into the model: unreadable, another architecture or variant, shapes differ."""


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
        raise PretrainedError(
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
    raise PretrainedError(
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

    Classifier tensors (``model.classifier``, or the prefixes in ``model.classifier_prefixes``) whose shape differs
    are skipped (another class count). Any other shape mismatch, or a file whose keys match nothing in the model,
    raises ``ValueError`` naming the key. With ``strict=True`` missing keys raise as well.
    """
    own = model.state_dict()
    sd, origin = read_state_dict(path), {}
    mit = "backbone.patch_embed1.proj.weight" in own and convert_mit(sd)
    if mit:
        sd, origin = mit
        _check_mit_variant(sd, model, path)
    else:
        sd = match_keys(sd, set(own))
    classifier = tuple(getattr(model, "classifier_prefixes", ("classifier.",)))
    report = LoadReport(str(path))
    to_load, bad = {}, []
    for k, v in sd.items():
        if k not in own:
            report.unexpected.append(origin.get(k, k))
        elif own[k].shape == v.shape:
            to_load[k] = v
        elif k.startswith(classifier):
            report.skipped.append(k)
        else:
            named = k if origin.get(k, k) == k else f"{k} (file: {origin[k]})"
            bad.append(f"{named}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    if bad:
        raise PretrainedError(
            f"{path}: shapes differ from the model (another architecture or width?): " + "; ".join(bad[:5])
        )
    if not to_load:
        raise PretrainedError(
            f"{path}: no tensor matches the model {type(model).__name__}; file keys start "
            f"{list(sd)[:5]}, model keys start {list(own)[:5]}"
        )
    report.missing = [k for k in own if k not in to_load and k not in report.skipped]
    if strict and report.missing:
        raise PretrainedError(report.summary())
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    if report.missing or report.unexpected:
        log.warning(report.summary())
    else:
        log.info(report.summary())
    return report


# ----------------------------------------------------------------------------- MiT / SegFormer / DAFormer layouts
# udaseg's MiT models keep the official module names under ``backbone.`` and mmseg's under ``decode_head.``. Files:
# - official ImageNet ``mit_b*.pth`` (NVlabs/SegFormer): ``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``,
#   ``attn.kv`` ... at the root, plus the ImageNet ``head.*`` (reported as unexpected);
# - mmseg / DAFormer segmentors: the same under ``backbone.`` (``model.backbone.`` in DAFormer's UDA checkpoints,
#   whose ``ema_model.``/``imnet_model.`` copies are then unexpected), heads under ``decode_head.``;
# - Hugging Face ``segformer`` (transformers' convert_segformer_original_to_pytorch.py, read backwards):
#   ``segformer.encoder.patch_embeddings.0.proj.weight``, ``block.0.0.attention.self.query``, ``key`` + ``value``
#   (concatenated here into ``attn.kv``), ``layer_norm_1`` ...; a semantic-segmentation model's ``decode_head.*``.
_HF_ENCODER_RENAMES = (
    (r"^patch_embeddings\.(\d+)\.layer_norm\.", lambda m: f"patch_embed{int(m[1]) + 1}.norm."),
    (r"^patch_embeddings\.(\d+)\.", lambda m: f"patch_embed{int(m[1]) + 1}."),
    (r"^layer_norm\.(\d+)\.", lambda m: f"norm{int(m[1]) + 1}."),
    (r"^block\.(\d+)\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
    (r"\.layer_norm_([12])\.", lambda m: f".norm{m[1]}."),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.self\.", ".attn."),  # sr, key, value (key + value are joined below)
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.mlp\.dense([12])\.", lambda m: f".mlp.fc{m[1]}."),
)
_OFFICIAL_ENCODER = re.compile(r"(patch_embed[1-4]|block[1-4]|norm[1-4])\.")  # anything else (head.*) is not ours
_HF_ENCODER = re.compile(r"(patch_embeddings|block|layer_norm)\.\d")
_HEAD_RENAMES = (  # Hugging Face and NVlabs SegFormer heads -> decode_head of segformer_mit*
    (r"^linear_c([1-4])\.", lambda m: f"linear_c.{int(m[1]) - 1}."),
    (r"^linear_fuse\.weight$", "linear_fuse.conv.weight"),
    (r"^batch_norm\.", "linear_fuse.bn."),
    (r"^classifier\.", "linear_pred."),
)


def _rename(key: str, rules: tuple) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _shortest_prefix(keys: list[str], suffix: str) -> str | None:
    found = sorted((k[: -len(suffix)] for k in keys if k.endswith(suffix)), key=lambda p: (len(p), p))
    return found[0] if found else None


def convert_mit(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]] | None:
    """A MiT-layout state dict in udaseg's names: ``(tensors, {udaseg key: file key})``; None if not MiT.

    Keys outside the encoder and the decode head keep their file names (they end up "unexpected").
    """
    sd = {re.sub(r"^(module\.)+", "", k): v for k, v in sd.items()}
    keys = list(sd)
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    hf = _shortest_prefix(keys, "patch_embeddings.0.proj.weight")
    official = _shortest_prefix(keys, "patch_embed1.proj.weight")
    if hf is not None:
        enc, root = hf, hf[: -len("encoder.")] if hf.endswith("encoder.") else hf
        # SegformerForSemanticSegmentation keeps decode_head.* beside segformer.*, not under it
        head_root = root[: -len("segformer.")] if root.endswith("segformer.") else root
        for k in keys:
            if k.startswith(enc) and _HF_ENCODER.match(k[len(enc) :]):
                new = "backbone." + _rename(k[len(enc) :], _HF_ENCODER_RENAMES)
            elif k.startswith(head_root + "decode_head."):
                new = "decode_head." + _rename(k[len(head_root + "decode_head.") :], _HEAD_RENAMES)
            else:
                new = k
            out[new], origin[new] = sd[k], k
        _join_key_value(out, origin)
    elif official is not None:
        root = official[: -len("backbone.")] if official.endswith("backbone.") else None
        for k in keys:
            if k.startswith(official) and _OFFICIAL_ENCODER.match(k[len(official) :]):
                new = "backbone." + k[len(official) :]
            elif root is not None and k.startswith(root + "decode_head."):
                new = "decode_head." + _rename(k[len(root + "decode_head.") :], _HEAD_RENAMES[:1])
            else:
                new = k
            out[new], origin[new] = sd[k], k
    else:
        return None
    return out, origin


def _join_key_value(sd: dict[str, Tensor], origin: dict[str, str]) -> None:
    """Hugging Face keeps ``key`` and ``value`` apart; the official layout has one ``kv`` (keys first)."""
    for k in [k for k in sd if re.search(r"\.attn\.key\.(weight|bias)$", k)]:
        v = k.replace(".attn.key.", ".attn.value.")
        if v in sd:
            kv = k.replace(".attn.key.", ".attn.kv.")
            sd[kv] = torch.cat([sd.pop(k), sd.pop(v)], dim=0)
            origin[kv] = f"{origin.pop(k)} + {origin.pop(v)}"


def mit_variant(sd: dict[str, Tensor], prefix: str = "backbone.") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(embed dims, depths) of the MiT encoder in ``sd`` (udaseg names under ``prefix``)."""
    dims, depths = [], []
    for i in range(1, 5):
        w = sd.get(f"{prefix}patch_embed{i}.proj.weight")
        dims.append(int(w.shape[0]) if w is not None else 0)
        blocks = {int(m[1]) for k in sd if (m := re.match(rf"{re.escape(prefix)}block{i}\.(\d+)\.", k))}
        depths.append(max(blocks) + 1 if blocks else 0)
    return tuple(dims), tuple(depths)


def _check_mit_variant(sd: dict[str, Tensor], model: nn.Module, path: str | Path) -> None:
    from udaseg.models.mit import MIT_SPECS

    spec = model.backbone.spec
    dims, depths = mit_variant(sd)
    if (dims, depths) != (spec.embed_dims, spec.depths):
        found = [n for n, s in MIT_SPECS.items() if (s.embed_dims, s.depths) == (dims, depths)]
        variant = found[0] if found else "no released variant"
        hint = f"; use model.name: {model.head_type}_mit{variant[4:]} for this file" if found else ""
        raise PretrainedError(
            f"{path}: holds a MiT encoder with embed dims {dims} and depths {depths} ({variant}), but the model's "
            f"encoder is {model.encoder_name} (embed dims {spec.embed_dims}, depths {spec.depths}){hint}"
        )
