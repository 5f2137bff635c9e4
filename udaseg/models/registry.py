"""Model registry: plain functions in a ``{name: fn}`` dict (the timm way).

A registered function takes ``num_classes`` and keyword options and returns an ``nn.Module`` whose forward maps
images ``(B, 3, H, W)`` in [0, 1] to ``{"logits": (B, C, h, w), "features": (B, F, h, w)}``. ``build_model`` adds
the optional local pretrained weights on top.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

ModelFn = Callable[..., nn.Module]
_MODELS: dict[str, ModelFn] = {}


def register_model(fn: ModelFn) -> ModelFn:
    """Decorator: register ``fn`` under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered (by {_MODELS[name].__module__})")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_MODELS)


def build_model(name: str, num_classes: int = 19, pretrained: str | Path | None = None, **kw) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs; load weights from the local file ``pretrained`` if given.

    Keyword options go to the model function (they are stored in checkpoints as ``model_spec["kwargs"]``, so keep
    them JSON-serialisable). Pretrained weights are never downloaded: see ``udaseg.models.pretrained``.
    """
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    model = _MODELS[name](num_classes=num_classes, **kw)
    if pretrained is not None:
        from udaseg.models.pretrained import load_pretrained

        load_pretrained(model, pretrained)
    return model
