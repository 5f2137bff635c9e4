"""DiGA: distil to generalise, then adapt (Shen et al., CVPR 2023).

Two plug-ins:

- `diga_warmup` (`--warmup diga`, source data only): symmetric knowledge distillation between a clean source image x
  and its cross-domain mixture x~ = M * x_aug + (1 - M) * G(x), with the loop's EMA teacher:
  CE(S(x), y) [the loop's source_ce] + lambda * [CE(T(x) -> S(x~)) + 0.5 * CE(T(x~) -> S(x))], lambda = 0.5.
  M covers a random half of the source classes present (and the ignored pixels), x_aug is a colour-augmented
  source blended with the original, G a source->target style translator.
- `diga` (`--method diga`): self-training with threshold-free pseudo-label selection: the teacher's label is kept
  where it agrees with the nearest class centroid of the teacher's features, ignored elsewhere; centroids are an
  EMA of class feature means (teacher target features where pseudo-label and argmax agree, and teacher features
  of the source mixture where ground truth and argmax agree). The symmetric distillation stays on (lambda = 0.25).

The translator G. The official G is a GAN (MUNIT-like encoders/decoders, 50k iterations of its own training). We
ship translators that need no training: `fda` (default), Fourier domain adaptation (Yang & Soatto, CVPR 2020): the
low-frequency amplitude spectrum of the source image is replaced by that of a random target image of the batch;
the phase (the structure, hence the labels) is kept, while global colour, illumination and tone move to the target
domain. It is the established training-free source->target translation for segmentation and costs two FFTs.
`stats` (per-channel mean/std matching) is the cheaper, weaker option. A trained translator plugs in with
`translator: "package.module:callable"`: the callable (a class is instantiated without arguments first) is called
as `fn(source (B,3,H,W), target (B,3,H,W)) -> (B,3,H,W)`, images in [0, 1]; an nn.Module is frozen in eval mode.

Where we differ from the official code (github.com/fy-vision/DiGA, see docs/methods/hiast_diga_tdi.md):
- Centroids are built online, never from an offline pass (5 passes over the target set) or a 50 GB label buffer:
  a class without a centroid gets, for its first step, the mean teacher feature of the pixels the teacher gives it;
  the EMA momentum is max(m, 1/(k+1)) at a class's k-th update, a running mean until 1/m updates (no init bias).
  Class means are per batch (class_feature_sums), not per image with 2x57 host syncs.
- The teacher runs in eval mode (the official never calls eval(): BatchNorm batch statistics and Dropout2d were on
  when it produced centroid features and soft targets).
- Augmentations work on [0, 1] images (the official applies kornia ops to already-normalised images).
- The photometric augmentation is colour jitter (0.4, p 0.5), grayscale (p 0.3) and Gaussian blur (p 0.8); the
  official kornia Sharpness(0.5, p 0.3) is left out.
- No best-checkpoint selection on the target validation set.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udaseg import distributed as dist
from udaseg.data import transforms as T
from udaseg.data.labels import IGNORE_INDEX
from udaseg.kernels import class_feature_sums
from udaseg.methods.base import Method, Step, register_method
from udaseg.methods.common import flatten_pixels, labels_to_features
from udaseg.models import upsample

Translator = Callable[[Tensor, Tensor], Tensor]


@dataclass
class DiGAWarmupOptions:
    distil_weight: float = 0.5  # lambda of the symmetric distillation (official: 0.5 GTA5, 0.25 SYNTHIA)
    aug_blend: float = 0.4  # x_aug = b * photo_aug(x) + (1 - b) * x
    translator: str = "fda"  # fda | stats | package.module:callable (a user's trained source->target translator)
    fda_window: float = 0.01  # FDA: half-width of the swapped low-frequency window, fraction of min(H, W)


@dataclass
class DiGAOptions(DiGAWarmupOptions):
    distil_weight: float = 0.25  # the symmetric distillation on source during self-training (0 = off)
    aug_blend: float = 0.3
    consensus: bool = True  # keep a pseudo-label only where the nearest feature centroid agrees
    centroid_momentum: float = 1e-3  # per step (official: 1e-4 per image, ~6 images per step)


# ----------------------------------------------------------------------------- translators and the mixture
def fda_translate(source: Tensor, target: Tensor, window: float) -> Tensor:
    """FDA: the low-frequency amplitudes of `source` (B,3,H,W) replaced by those of `target`; phase kept.

    The swapped window is |k_y| < b, |k_x| < b around the zero frequency, b = max(1, floor(min(H, W) * window)),
    symmetric in +/-k so the result stays real.
    """
    h, w = source.shape[-2:]
    b = max(1, math.floor(min(h, w) * window))
    fy = torch.fft.fftfreq(h, 1 / h, device=source.device).abs()  # integer frequencies 0, 1, ..., -1
    fx = torch.fft.fftfreq(w, 1 / w, device=source.device).abs()
    low = (fy[:, None] < b) & (fx[None, :] < b)  # (H, W)
    fs, ft = torch.fft.fft2(source.float()), torch.fft.fft2(target.float())
    amplitude = torch.where(low, ft.abs(), fs.abs())
    out = torch.fft.ifft2(torch.polar(amplitude, fs.angle())).real
    return out.clamp(0, 1).to(source.dtype)


def stats_translate(source: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """Per image and channel, the source's mean/std replaced by the target's. (B,3,H,W) -> (B,3,H,W)."""
    ms, ss = source.mean((2, 3), keepdim=True), source.std((2, 3), keepdim=True)
    mt, st = target.mean((2, 3), keepdim=True), target.std((2, 3), keepdim=True)
    return ((source - ms) / (ss + eps) * st + mt).clamp(0, 1)


def build_translator(spec: str, fda_window: float, device) -> Translator:
    """'fda', 'stats' or 'package.module:callable' -> fn(source, target) -> translated source."""
    if spec == "fda":
        return lambda s, t: fda_translate(s, t, fda_window)
    if spec == "stats":
        return stats_translate
    if ":" not in spec:
        raise ValueError(f"methods.diga.translator: {spec!r} is not fda, stats or 'package.module:callable'")
    module_name, attr = spec.split(":", 1)
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"methods.diga.translator: cannot import {spec!r} ({e})") from e
    if isinstance(obj, type):
        obj = obj()
    if isinstance(obj, nn.Module):
        obj = obj.to(device).eval().requires_grad_(False)
    if not callable(obj):
        raise ValueError(f"methods.diga.translator: {spec!r} is not callable")
    return obj


def photo_augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """DiGA's photometric view: colour jitter (0.4, p 0.5), grayscale (p 0.3), Gaussian blur (p 0.8).

    The official 3x3 kernel with sigma 2 is close to a 3x3 box, whose spread a sigma of 0.8 matches.
    """
    b = x.shape[0]
    x = T.color_jitter(x, 0.4, gen, p=0.5)
    gray = (torch.rand(b, generator=gen) < 0.3).to(x.device).view(b, 1, 1, 1)
    luma = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = torch.where(gray, luma.expand_as(x), x)
    sigma = torch.where(torch.rand(b, generator=gen) < 0.8, torch.full((b,), 0.8), torch.zeros(b))
    return T.gaussian_blur(x, sigma)


def cross_domain_mixture(
    image: Tensor, label: Tensor, target: Tensor, gen: torch.Generator, translate: Translator, blend: float
) -> Tensor:
    """x~ = M * x_aug + (1 - M) * G(x): M = half of the source classes present plus the ignored pixels.

    image (B,3,H,W), label (B,H,W), target (B,3,H,W) target-domain images (a random one is G's style reference).
    """
    keep = T.class_mix_masks(label, gen).to(image.device) | (label == IGNORE_INDEX)  # (B, H, W)
    x_aug = blend * photo_augment(image, gen) + (1 - blend) * image
    perm = torch.randperm(target.shape[0], generator=gen).to(target.device)
    translated = translate(image, target[perm]).to(image.dtype)
    return T.mix(keep, x_aug, translated)


def soft_cross_entropy(target_probs: Tensor, logits: Tensor) -> Tensor:
    """Mean over pixels of -sum_c q_c log softmax(logits)_c. (B, C, H, W) each."""
    return -(target_probs * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def teacher_forward(step: Step, image: Tensor) -> dict[str, Tensor]:
    """Teacher logits at image size and features at output stride, eval mode, no gradients, the loop's autocast."""
    step.teacher.eval()
    with torch.no_grad():
        out = step.forward(step.teacher, image)
    return {"logits": out["logits"], "features": out["features"].float()}


def symmetric_distillation(step: Step, translate: Translator, blend: float) -> tuple[Tensor, dict[str, Tensor]]:
    """CE(T(x) -> S(x~)) + 0.5 * CE(T(x~) -> S(x)); returns the loss and the teacher's output on x~."""
    x, y = step.source_image, step.source_label
    mixture = cross_domain_mixture(x, y, step.target_image, step.generator, translate, blend)
    t = teacher_forward(step, torch.cat([x, mixture]))  # eval-mode BN: images are independent
    t_x, t_mix = t["logits"].chunk(2)
    s_mix = step.forward(step.student, mixture)["logits"]
    loss = soft_cross_entropy(t_x.softmax(1), s_mix) + 0.5 * soft_cross_entropy(
        t_mix.softmax(1), step.student_source["logits"]
    )
    return loss, {"logits": t_mix, "features": t["features"].chunk(2)[1]}


@register_method
class DiGAWarmup(Method):
    """Source-only warm-up by symmetric distillation (`--warmup diga`); target images only style the mixture."""

    name = "diga_warmup"
    Options = DiGAWarmupOptions
    warmup = True
    warmup_alias = "diga"  # --warmup diga

    def __init__(self, options=None, num_classes: int = 19, feature_dim: int = 0, device: str = "cpu"):
        super().__init__(options or self.Options(), num_classes, feature_dim, device)
        self.translate = build_translator(self.options.translator, self.options.fda_window, self.device)

    @property
    def needs_target(self) -> bool:
        return False

    @property
    def uses_target_images(self) -> bool:
        return True  # the translator borrows the target images' style

    def losses(self, step: Step) -> dict[str, Tensor]:
        if not self.options.distil_weight or step.target_image is None:
            return {}
        loss, _ = symmetric_distillation(step, self.translate, self.options.aug_blend)
        return {"distil": self.options.distil_weight * loss}


# ----------------------------------------------------------------------------- threshold-free selection
def nearest_centroid_labels(features: Tensor, centroids: Tensor, available: Tensor, size: tuple[int, int]) -> Tensor:
    """argmax_k of softmax_k(-||f - c_k||) upsampled (bilinear) to `size`. Classes not `available` never win.

    features (B, F, h, w), centroids (C, F), available (C,) bool -> (B, H, W) int64.
    """
    b, _, h, w = features.shape
    dist_ = torch.cdist(flatten_pixels(features.float()), centroids.float())  # (B*h*w, C)
    dist_ = dist_.masked_fill(~available, math.inf)
    weights = (-dist_).softmax(1).view(b, h, w, -1).permute(0, 3, 1, 2)  # (B, C, h, w)
    return upsample(weights, size).argmax(1)


def class_means(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class feature sums and counts of (B, F, h, w) features under (B, h, w) labels."""
    return class_feature_sums(flatten_pixels(features.float()), labels.reshape(-1), num_classes)


@register_method
class DiGA(Method):
    """Threshold-free self-training with centroid consensus, plus the symmetric distillation on source."""

    name = "diga"
    Options = DiGAOptions
    requires = ("self_training",)

    def __init__(self, options=None, num_classes: int = 19, feature_dim: int = 0, device: str = "cpu"):
        super().__init__(options or DiGAOptions(), num_classes, feature_dim, device)
        self.translate = build_translator(self.options.translator, self.options.fda_window, self.device)
        self.centroids = torch.zeros(num_classes, max(feature_dim, 1), device=self.device)  # (C, F)
        self.updates = torch.zeros(num_classes, dtype=torch.long, device=self.device)  # (C,) EMA updates so far

    def pseudo_labels(self, step: Step) -> None:
        if not self.options.consensus:
            return
        feats = step.teacher_target["features"]  # (B, F, h, w)
        size = tuple(step.pseudo_label.shape[-2:])
        argmax = step.teacher_target["probs"].argmax(1)  # (B, H, W)
        centroids, available = self.centroids_for(feats, labels_to_features(argmax, feats.shape[-2:], self.num_classes))
        nearest = nearest_centroid_labels(feats, centroids, available, size)
        label = step.pseudo_label
        kept = torch.where(label == nearest, label, torch.full_like(label, IGNORE_INDEX))
        step.pseudo_label = kept
        self.scratch(step).update(label=kept, argmax=argmax)
        valid = label != IGNORE_INDEX
        step.metrics["diga/agree"] = float((kept != IGNORE_INDEX).sum() / valid.sum().clamp(min=1))

    def centroids_for(self, features: Tensor, argmax: Tensor) -> tuple[Tensor, Tensor]:
        """Stored centroids; a class without one borrows this batch's mean feature of its argmax pixels."""
        have = self.updates > 0
        sums, counts = class_means(features, argmax, self.num_classes)
        fresh = ~have & (counts > 0)
        batch_means = sums / counts.clamp(min=1)[:, None]
        return torch.where(fresh[:, None], batch_means, self.centroids), have | fresh

    def losses(self, step: Step) -> dict[str, Tensor]:
        if not self.options.distil_weight:
            return {}
        loss, t_mix = symmetric_distillation(step, self.translate, self.options.aug_blend)
        self.scratch(step)["teacher_mixture"] = t_mix
        return {"distil": self.options.distil_weight * loss}

    def update(self, step: Step) -> None:
        """Centroids <- EMA of class means, summed over ranks: target (label == argmax) and source mixture
        (ground truth == argmax) teacher features."""
        ex = self.scratch(step)
        c = self.num_classes
        parts = []
        if "label" in ex:
            feats = step.teacher_target["features"]
            size = feats.shape[-2:]
            label = labels_to_features(ex["label"], size, c)
            agree = labels_to_features(ex["argmax"], size, c) == label
            parts.append((feats, torch.where(agree, label, IGNORE_INDEX)))
        if "teacher_mixture" in ex:
            feats = ex["teacher_mixture"]["features"]
            size = feats.shape[-2:]
            gt = labels_to_features(step.source_label, size, c)
            argmax = labels_to_features(ex["teacher_mixture"]["logits"].argmax(1), size, c)
            parts.append((feats, torch.where(argmax == gt, gt, IGNORE_INDEX)))
        if not parts or not self.options.consensus:
            return
        sums = sum(class_means(f, lbl, c)[0] for f, lbl in parts)
        counts = sum(class_means(f, lbl, c)[1] for f, lbl in parts)
        sums, counts = dist.all_reduce_sum(sums), dist.all_reduce_sum(counts)
        self.apply_means(sums, counts)

    def apply_means(self, sums: Tensor, counts: Tensor) -> None:
        """c_k <- (1 - m_k) c_k + m_k v_k for the classes seen, m_k = max(momentum, 1 / (updates_k + 1))."""
        seen = counts > 0
        if self.centroids.shape[1] != sums.shape[1]:  # feature_dim was not given: size the centroids now
            self.centroids = torch.zeros_like(sums)
        m = torch.maximum(
            torch.full_like(sums[:, 0], self.options.centroid_momentum), 1.0 / (self.updates + 1).float()
        )[:, None]
        means = sums / counts.clamp(min=1)[:, None].float()
        self.centroids = torch.where(seen[:, None], (1 - m) * self.centroids + m * means, self.centroids)
        self.updates = self.updates + seen.long()

    def state_dict(self) -> dict[str, Any]:
        return {"centroids": self.centroids, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"centroids", "updates"}:
            raise ValueError(f"method diga: checkpoint state has keys {sorted(state)}, expected centroids, updates")
        if state["centroids"].shape[0] != self.num_classes:
            raise ValueError(
                f"method diga: checkpoint centroids have {state['centroids'].shape[0]} classes, "
                f"expected {self.num_classes}"
            )
        self.centroids = state["centroids"].to(self.device, torch.float32).clone()
        self.updates = state["updates"].to(self.device, torch.long).clone()

    def sync_state(self) -> None:
        """update() sums the class statistics of all ranks, so the centroids are already equal; this re-broadcasts
        rank 0's copy as a guard against reduction-order rounding."""
        dist.broadcast_tensor(self.centroids)
        dist.broadcast_tensor(self.updates)
