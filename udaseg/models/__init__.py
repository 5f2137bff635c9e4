"""Segmentation models: a ``{name: fn}`` registry, ``build_model``, and the shared ``upsample``.

Contract (docs/architecture.md): ``model(x)`` with ``x`` float RGB in [0, 1], ``(B, 3, H, W)``, returns
``{"logits": (B, C, h, w), "features": (B, F, h, w)}`` with ``h = ceil(H / model.output_stride)``; every model has
``num_classes``, ``feature_dim``, ``output_stride``, ``head_names`` and ``param_groups(lr, head_lr_mult=10)``.

| name            | params (C=19) | output stride | features                            |
|-----------------|---------------|---------------|-------------------------------------|
| compact         | 1.10 M        | 8             | decoder output, 96 ch               |
| deeplabv2_r50   | 24.9 M        | 8             | layer4 output (ASPP input), 2048 ch |
| deeplabv2_r101  | 43.9 M        | 8             | layer4 output (ASPP input), 2048 ch |
| segformer_mitb0 | 3.72 M        | 4             | all-MLP fused features, 256 ch      |
| daformer_mitb0  | 6.90 M        | 4             | sep-ASPP fused features, 256 ch     |
| daformer_mitb5  | 85.2 M        | 4             | sep-ASPP fused features, 256 ch     |

``daformer_mitb0``..``b5`` and ``segformer_mitb0``..``b5``: a MiT encoder (``mit.py``) with DAFormer's or SegFormer's
decoder (``daformer.py``); docs/models.md lists every variant and the weight files they load.

Pretrained weights come from a local file only (``build_model(..., pretrained=PATH)``, ``models.pretrained``).
"""

from udaseg.models import compact as _compact  # noqa: F401  (registers "compact")
from udaseg.models import daformer as _daformer  # noqa: F401  (registers "daformer_mitb0".."b5", "segformer_mitb0"..)
from udaseg.models import deeplabv2 as _deeplabv2  # noqa: F401  (registers "deeplabv2_r101", "deeplabv2_r50")
from udaseg.models.common import Normalize, SegmentationModel, param_groups, upsample
from udaseg.models.registry import build_model, list_models, register_model

__all__ = [
    "Normalize",
    "SegmentationModel",
    "build_model",
    "list_models",
    "param_groups",
    "register_model",
    "upsample",
]
