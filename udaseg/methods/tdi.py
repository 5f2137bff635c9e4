"""TDI: exploring high-quality target domain information (Li et al., ACM MM 2022; code: ljjcoder/EHTDI).

Two additions to the common loop (`--method tdi`):

- **Target->source mix-up**: where the teacher is confident (max-prob > 0.95) and the pseudo-label survived the
  earlier plug-ins, target pixels are pasted onto the source image of the same slot, with their pseudo-labels;
  the rest keeps the source image and ground truth. The student (strong view) learns target object boundaries
  with near-correct labels: the reverse of ClassMix. Loss: CE on this batch, weight `mix_weight`.
- **Multi-level contrastive loss** between two pixel-aligned views of the mixed target batch, the loop's strong
  view (`step.student_mix`) and a weak view (the same mix before the photometric strong view, one extra student
  forward). Embeddings are the softmax class probabilities, as in the official code (no projection head).
  * pixel level: per image, `pixels` sampled locations; the same location in the other view is the positive, the
    other sampled pixels of both views are negatives; InfoNCE with tau = 0.05.
  * prototype level: per image and view, the mean logit vector of each labelled class (ground truth on source
    pixels, pseudo-labels with confidence > 0.95 on target pixels), softmax-ed; the same class in the other view is
    the positive, the other prototypes negatives; InfoNCE with tau = 1/7.
  Each weighted 0.01 (official NCE_weight: 0.01 GTA5, 0.008 SYNTHIA), averaged over images.

Where we differ from the official code (github.com/ljjcoder/EHTDI, see docs/methods/hiast_diga_tdi.md):
- The pixel loss samples `pixels` locations per image (the official uses all 4225 of a 65x65 map: an 8450 x 8450
  similarity matrix, ~1-2 GB with its gradients). Memory is O(pixels^2) per image.
- Every image of the target->source batch is trained on (the official computes two and keeps the first).
- The confident region comes from the teacher's prediction on the clean target crop (the official thresholds the
  weak view after ClassMix, so pasted source pixels can be re-pasted as 'target').
- Pseudo-labels come from the loop's EMA teacher (the official uses the current student, PixMatch style).
- Prototypes and pixels are taken at image resolution from the upsampled logits (official: the 1/8 map); class
  sums go through class_feature_sums.
- The target->source weight is relative to the loop's ClassMix CE (1.0): the official weights both at 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from udaseg.data import transforms as T
from udaseg.data.labels import IGNORE_INDEX
from udaseg.kernels import class_feature_sums
from udaseg.methods.base import Method, Step, register_method
from udaseg.methods.common import flatten_pixels, sample_pixels, target_aligned

NAME = "tdi"


@dataclass
class TDIOptions:
    confidence: float = 0.95  # teacher max-prob above which a target pixel is pasted onto the source (Tmax)
    mix_weight: float = 1.0  # CE weight of the target->source batch (relative to the loop's ClassMix CE)
    strong_view: bool = True  # colour jitter + blur on the target->source image
    pixel_weight: float = 0.01  # pixel-level InfoNCE (NCE_weight; 0.008 for SYNTHIA)
    proto_weight: float = 0.01  # prototype-level InfoNCE
    pixel_temperature: float = 0.05  # official: logits scaled by 20
    proto_temperature: float = 1 / 7  # official: logits scaled by 7
    pixels: int = 512  # sampled locations per image for the pixel-level loss (memory O(pixels^2))


def info_nce_pairs(a: Tensor, b: Tensor, temperature: float, valid: Tensor | None = None) -> Tensor:
    """InfoNCE over 2N vectors [a; b] (N, D) each: row i's positive is its partner in the other view, every other
    row (both views, self excluded) a negative. `valid` (N,) bool drops pairs. Returns the mean over kept rows."""
    n = a.shape[0]
    z = torch.cat([a, b])  # (2N, D)
    sim = z @ z.T / temperature  # (2N, 2N)
    drop = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    keep = torch.ones(2 * n, dtype=torch.bool, device=z.device) if valid is None else valid.repeat(2)
    drop |= ~keep[None, :]
    sim = sim.masked_fill(drop, float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    loss = F.cross_entropy(sim[keep], partner[keep], reduction="sum")
    return loss / keep.sum().clamp(min=1)


def pixel_contrast(
    logits_a: Tensor, logits_b: Tensor, valid: Tensor, count: int, temperature: float, generator: torch.Generator | None
) -> Tensor:
    """Pixel-level InfoNCE on `count` sampled locations per image, softmax probabilities as embeddings.

    logits_a/b (B, C, H, W) of two pixel-aligned views; valid (B, H, W) bool. Returns the mean over images.
    """
    losses = []
    for i in range(logits_a.shape[0]):  # per image: negatives come from the same image, as in the paper
        idx = sample_pixels(valid[i], count, generator)  # (n,) flat indices into H*W
        if idx.numel() < 2:
            continue
        pa = logits_a[i].flatten(1)[:, idx].T.float().softmax(1)  # (n, C)
        pb = logits_b[i].flatten(1)[:, idx].T.float().softmax(1)
        losses.append(info_nce_pairs(pa, pb, temperature))
    return torch.stack(losses).mean() if losses else logits_a.sum() * 0


def prototype_contrast(logits_a: Tensor, logits_b: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Prototype-level InfoNCE: per image, softmax of the class-mean logits of each view.

    logits_a/b (B, C, H, W); labels (B, H, W) (ignored pixels skipped). Returns the mean over images with a class.
    """
    b, c = logits_a.shape[:2]
    valid = labels != IGNORE_INDEX
    keyed = torch.where(valid, labels + c * torch.arange(b, device=labels.device)[:, None, None], -1)  # (B, H, W)
    sums_a, counts = class_feature_sums(flatten_pixels(logits_a.float()), keyed.reshape(-1), b * c, ignore_index=-1)
    sums_b, _ = class_feature_sums(flatten_pixels(logits_b.float()), keyed.reshape(-1), b * c, ignore_index=-1)
    present = (counts > 0).view(b, c)
    den = counts.clamp(min=1)[:, None].float()
    proto_a = (sums_a / den).softmax(1).view(b, c, c)  # (B, classes, C)
    proto_b = (sums_b / den).softmax(1).view(b, c, c)
    losses = [info_nce_pairs(proto_a[i], proto_b[i], temperature, present[i]) for i in range(b) if present[i].any()]
    return torch.stack(losses).mean() if losses else logits_a.sum() * 0


@register_method
class TDI(Method):
    name = NAME
    Options = TDIOptions
    requires = ("self_training",)

    def __init__(
        self, options: TDIOptions | None = None, num_classes: int = 19, feature_dim: int = 0, device: str = "cpu"
    ):
        super().__init__(options or TDIOptions(), num_classes, feature_dim, device)

    def mix(self, step: Step) -> None:
        """Target->source batch: confident target pixels (with pseudo-labels) over the source images."""
        o = self.options
        confident = (step.pseudo_label != IGNORE_INDEX) & (step.pseudo_confidence > o.confidence)  # (B, H, W)
        image = T.mix(confident, step.target_image, step.source_image)
        if o.strong_view:
            image = T.strong_view(image, step.generator)
        self.scratch(step).update(image=image, label=T.mix(confident, step.pseudo_label, step.source_label))
        step.metrics["tdi/pasted"] = float(confident.float().mean())

    def losses(self, step: Step) -> dict[str, Tensor]:
        o, ex = self.options, self.scratch(step)
        if "image" not in ex or "logits" not in step.student_mix:
            return {}
        out: dict[str, Tensor] = {}
        if o.mix_weight:
            logits = step.forward(step.student, ex["image"])["logits"]
            out["t2s_ce"] = o.mix_weight * F.cross_entropy(logits, ex["label"], ignore_index=IGNORE_INDEX)
        if o.pixel_weight or o.proto_weight:
            strong = step.student_mix["logits"]  # (B, C, H, W)
            weak = step.forward(step.student, self.weak_mix(step))["logits"]
            aligned = target_aligned(step)  # donor pixels pasted after ClassMix have no weak counterpart
            if o.pixel_weight:
                out["pixel_nce"] = o.pixel_weight * pixel_contrast(
                    weak, strong, aligned, o.pixels, o.pixel_temperature, step.generator
                )
            if o.proto_weight:
                labels = self.prototype_labels(step, aligned)
                out["proto_nce"] = o.proto_weight * prototype_contrast(weak, strong, labels, o.proto_temperature)
        return out

    @staticmethod
    def weak_mix(step: Step) -> Tensor:
        """The loop's mixed image before its photometric strong view (ClassMix of source onto the weak target)."""
        if step.mix_mask is None:
            return step.target_image
        return T.mix(step.mix_mask, step.source_image, step.target_image)

    def prototype_labels(self, step: Step, aligned: Tensor) -> Tensor:
        """Ground truth on ClassMix source pixels, pseudo-labels above `confidence` on aligned target pixels."""
        is_source = step.mix_mask if step.mix_mask is not None else torch.zeros_like(aligned)
        confident = step.pseudo_confidence > self.options.confidence
        label = torch.where(is_source, step.source_label, torch.where(confident, step.pseudo_label, IGNORE_INDEX))
        return torch.where(aligned | is_source, label, IGNORE_INDEX)

    def state_dict(self) -> dict[str, Any]:
        return {}  # TDI learns nothing besides the network: no bank, no thresholds
