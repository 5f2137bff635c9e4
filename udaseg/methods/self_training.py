"""The common loop: mean-teacher self-training with ClassMix (DACS, Tranheden et al. 2021; DAFormer, Hoyer et al. 2022).

The EMA teacher labels the weak target view; the student trains on a ClassMix of source and target (half of the
source classes of each source image pasted onto a target image, labels mixed the same way), seen through a strong
photometric view. Each pseudo-labelled image is weighted by the fraction of its pixels whose confidence passes
`pseudo_threshold` (DAFormer's quality weight). Source supervision and the EMA update belong to the loop itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from udaseg.data import transforms as T
from udaseg.data.labels import IGNORE_INDEX
from udaseg.methods.base import Method, Step, register_method
from udaseg.methods.common import weighted_cross_entropy


@dataclass
class SelfTrainingOptions:
    pseudo_threshold: float = 0.968  # DAFormer: confidence that counts a pixel towards the image's weight
    weight: float = 1.0  # weight of the pseudo-label cross-entropy
    mix: str = "classmix"  # classmix (DACS) or none (plain pseudo-label training on the target image)
    strong_view: bool = True  # colour jitter + blur on the student's mixed image (DACS)
    ignore_top: int = 0  # pixels at the top/bottom of target crops left out of the pseudo-labels
    ignore_bottom: int = 0  # (DAFormer: 15 / 120 at 512x512 Cityscapes crops, the ego-vehicle hood)


def confident_fraction(confidence: Tensor, threshold: float, valid: Tensor) -> Tensor:
    """Per image, the fraction of valid pixels above threshold, broadcast to (B, H, W)."""
    hit = ((confidence >= threshold) & valid).flatten(1).sum(1).float()
    frac = hit / valid.flatten(1).sum(1).clamp(min=1).float()  # (B,)
    return frac[:, None, None].expand_as(confidence)


@register_method
class SelfTraining(Method):
    name = "self_training"
    Options = SelfTrainingOptions

    def pseudo_labels(self, step: Step) -> None:
        o = self.options
        probs = step.teacher_target["probs"]  # (B, C, H, W)
        confidence, label = probs.max(dim=1)  # (B, H, W)
        valid = torch.ones_like(label, dtype=torch.bool)
        if o.ignore_top:
            valid[:, : o.ignore_top] = False
        if o.ignore_bottom:
            valid[:, -o.ignore_bottom :] = False
        step.pseudo_label = torch.where(valid, label, torch.full_like(label, IGNORE_INDEX))
        step.pseudo_confidence = confidence
        step.class_probs = probs
        step.pseudo_weight = confident_fraction(confidence, o.pseudo_threshold, valid)

    def mix(self, step: Step) -> None:
        """ClassMix the source batch onto the target batch (each source image onto the target image of its slot)."""
        o = self.options
        if o.mix == "classmix":
            mask = T.class_mix_masks(step.source_label, step.generator)  # (B, H, W) bool, True = from source
            mask = mask.to(step.source_image.device)
            step.mix_mask = mask
            step.mix_image = T.mix(mask, step.source_image, step.target_image)
            step.mix_label = T.mix(mask, step.source_label, step.pseudo_label)
            step.mix_weight = T.mix(mask, torch.ones_like(step.pseudo_weight), step.pseudo_weight)
            step.mix_aligned = ~mask
        elif o.mix == "none":
            step.mix_image, step.mix_label, step.mix_weight = step.target_image, step.pseudo_label, step.pseudo_weight
            step.mix_aligned = torch.ones_like(step.pseudo_label, dtype=torch.bool)
        else:
            raise ValueError(f"methods.self_training.mix: {o.mix!r} is not one of classmix, none")
        if o.strong_view:
            step.mix_image = T.strong_view(step.mix_image, step.generator)

    def losses(self, step: Step) -> dict[str, Tensor]:
        logits = step.student_mix["logits"]
        return {"pseudo_ce": self.options.weight * weighted_cross_entropy(logits, step.mix_label, step.mix_weight)}


@register_method
class SourceOnly(Method):
    """Supervised training on the source domain alone: the baseline every method is measured against."""

    name = "source_only"
    warmup = True  # the default warm-up stage (`train.warmup: source_only`)

    @property
    def needs_target(self) -> bool:
        return False
