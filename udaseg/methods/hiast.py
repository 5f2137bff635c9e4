"""HIAST: hard-aware instance adaptive self-training (Zhu et al., TPAMI 2025; IAST, Mei et al., ECCV 2020).

Three parts, all online inside the common loop (`--method hiast`):

- **Instance adaptive selector** (IAS): per batch and class c, psi_c = quantile of the teacher's max-probabilities
  of the pixels it predicts as c (with the old threshold prepended, so the list is never empty) at level
  1 - alpha * theta_c^gamma; theta_c <- beta * theta_c + (1 - beta) * psi_c, clamped below 1; a pseudo-label is
  kept where p >= theta_c. The thresholds are method state.
- **Hard-aware pseudo-label augmentation** (HPLA): an EMA of each class's mean pseudo-label confidence ranks the
  classes; the `hard_classes` least confident are hard. A hard class c is drawn with probability ~ (1 - conf_c)^2,
  a donor holding c is drawn from a bounded pool of recent target crops with their pseudo-labels, and all the
  donor's hard-class pixels are pasted onto the target part of the student's mixed image and its labels.
- **Region-adaptive regularisation**: on pseudo-labelled target pixels, smoothing (KL(uniform || p), 0.1); on
  the others, sharpening (entropy, 1.0) and consistency with the teacher's soft prediction (soft CE, 0.5).

Where we differ from the official code (github.com/bupt-ai-cz/HIAST, see docs/methods/hiast_diga_tdi.md):
- IAS runs per training batch on the EMA teacher instead of in an offline pseudo-label pass per round; the per-pixel
  Python threshold lookup (`np.apply_along_axis`) becomes one tensor gather, and the 19 per-class quantiles are one
  sort plus a gather at per-class ranks (`class_quantiles`).
- The class confidences are a bias-corrected EMA updated every step (the official fixes them per round). Classes
  never pseudo-labelled have no estimate and are never hard: this replaces the SYNTHIA path that sets their value to
  inf and then fails on NaN sampling probabilities.
- The donor is drawn among pool entries that hold the drawn class (the smallest 10 % per class dropped, as
  official); the official "up to 3 donors until half the hard classes are covered" loop always stops after one
  donor, so we use one donor, which is what it does. Donor pixels land only where the mix shows the target
  (ClassMix source pixels stay on top, as if ClassMix ran after the paste) and get their own strong view. Donor
  images are kept as uint8 (quantisation <= 1/510), so the pool is small enough to checkpoint.
- The regularisers use (B, H, W) region masks, not (B, C, H, W) `ones_like(logits)` weights. Each term is a
  per-pixel mean over its region divided by C, which is the scale the official per-(pixel, class) normalisation
  gives and for which the weights 0.1 / 1.0 / 0.5 were tuned. Smoothing is the true KL to uniform (the official
  -(1/C) sum log p differs by the constant log C: same gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from udaseg import distributed as dist
from udaseg.data import transforms as T
from udaseg.data.labels import IGNORE_INDEX
from udaseg.kernels import fuse_pseudo_labels
from udaseg.methods.base import Method, Step, register_method
from udaseg.methods.common import target_aligned

NAME = "hiast"


@dataclass
class HIASTOptions:
    alpha: float = 0.5  # IAS: class c keeps the top alpha * theta_c^gamma fraction of its pixels per batch
    beta: float = 0.9  # IAS: EMA momentum of the class thresholds
    gamma: float = 8.0  # IAS: confident classes keep a smaller fraction (0.9^8 = 0.43)
    theta0: float = 0.9  # initial class thresholds
    max_threshold: float = 0.999  # thresholds stay below 1 (official: values >= 1 become 0.999)
    confidence_momentum: float = 0.99  # EMA of each class's mean pseudo-label confidence (ranks the hard classes)
    hard_classes: int = 14  # the least confident classes are hard (14 of 19 in the paper)
    pool_size: int = 16  # donor pool: recent target crops and pseudo-labels (uint8, 2 MB each at 512x1024)
    drop_smallest: float = 0.1  # per class, donors in the lowest 10 % of its pixel count are not drawn
    paste: bool = True  # hard-aware pseudo-label augmentation on/off
    donor_strong_view: bool = True  # donor pixels get their own colour jitter + blur, like the rest of the mix
    smooth_weight: float = 0.1  # KL(uniform || p) on pseudo-labelled target pixels
    sharpen_weight: float = 1.0  # entropy on the other target pixels (IAST: 3.0)
    consistency_weight: float = 0.5  # soft CE to the teacher's prediction on the other target pixels


def class_quantiles(confidence: Tensor, labels: Tensor, levels: Tensor, prior: Tensor) -> Tensor:
    """Per-class quantile (numpy's linear interpolation) of `confidence`, with prior[c] added to class c's values.

    One sort by (class, confidence), then a gather at each class's fractional rank: no loop over classes.
    Args:
        confidence: (N,) values in [0, 1]. labels: (N,) int64; values outside [0, C) are skipped.
        levels: (C,) quantile level of each class in [0, 1]. prior: (C,) one extra value per class.
    Returns:
        (C,) float32.
    """
    c = levels.numel()
    keep = (labels >= 0) & (labels < c)
    conf = torch.cat([confidence[keep].double(), prior.double()])  # (N' + C,)
    lab = torch.cat([labels[keep], torch.arange(c, device=labels.device)])
    values = conf[torch.argsort(lab.double() * 2 + conf)]  # class major, confidence minor (conf <= 1 < 2)
    counts = torch.bincount(lab, minlength=c)  # (C,) >= 1 thanks to the prior
    start = torch.cumsum(counts, 0) - counts
    pos = levels.double().clamp(0, 1) * (counts - 1)
    lo, hi = pos.floor().long(), pos.ceil().long()
    v_lo, v_hi = values[start + lo], values[start + hi]
    return (v_lo + (v_hi - v_lo) * (pos - lo)).float()


def ias_update(thresholds: Tensor, psi: Tensor, beta: float, max_threshold: float) -> Tensor:
    """theta <- beta * theta + (1 - beta) * psi, kept below 1."""
    return (beta * thresholds + (1 - beta) * psi).clamp(max=max_threshold)


def hard_class_mask(confidence: Tensor, seen: Tensor, count: int) -> Tensor:
    """(C,) bool: the `count` classes of lowest confidence among the seen ones."""
    key = torch.where(seen, confidence, torch.full_like(confidence, math.inf))
    rank = torch.empty_like(key, dtype=torch.long)
    rank[torch.argsort(key, stable=True)] = torch.arange(key.numel(), device=key.device)
    return seen & (rank < count)


def region_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of (B, H, W) values over a (B, H, W) bool mask; 0 (with gradient path) for an empty mask."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def region_losses(logits: Tensor, teacher_probs: Tensor, labelled: Tensor, unlabelled: Tensor) -> dict[str, Tensor]:
    """HIAST's three regularisers, each a mean over its region of a per-pixel term, divided by C.

    logits (B, C, H, W) of the student; teacher_probs (B, C, H, W); labelled/unlabelled (B, H, W) bool.
    """
    c = logits.shape[1]
    log_p = F.log_softmax(logits.float(), dim=1)  # (B, C, H, W)
    kl_uniform = -math.log(c) - log_p.mean(1)  # (B, H, W): KL(u || p)
    entropy = -(log_p.exp() * log_p).sum(1)
    soft_ce = -(teacher_probs * log_p).sum(1)
    return {
        "smooth": region_mean(kl_uniform, labelled) / c,
        "sharpen": region_mean(entropy, unlabelled) / c,
        "consistency": region_mean(soft_ce, unlabelled) / c,
    }


def to_uint8(image: Tensor) -> Tensor:
    return (image * 255).round().clamp(0, 255).to(torch.uint8)


@register_method
class HIAST(Method):
    name = NAME
    Options = HIASTOptions
    requires = ("self_training",)

    def __init__(
        self, options: HIASTOptions | None = None, num_classes: int = 19, feature_dim: int = 0, device: str = "cpu"
    ):
        super().__init__(options or HIASTOptions(), num_classes, feature_dim, device)
        c, dev = num_classes, self.device
        self.thresholds = torch.full((c,), self.options.theta0, device=dev)  # (C,) IAS theta
        self.confidence_num = torch.zeros(c, device=dev)  # (C,) EMA numerator of the class confidence
        self.confidence_den = torch.zeros(c, device=dev)  # (C,) EMA of 1 over the same steps (bias correction)
        self.pool: dict[str, Any] = {}  # images (P,3,H,W) u8, labels (P,H,W) u8, weights (P,), counts (P,C), size, next

    # --- hooks ---
    def pseudo_labels(self, step: Step) -> None:
        """IAS: thresholds adapted to this batch; refine the earlier plug-ins' labels (only ever drop pixels)."""
        o, c = self.options, self.num_classes
        probs = step.teacher_target["probs"]  # (B, C, H, W)
        label, conf = fuse_pseudo_labels(probs, None, 1.0, torch.zeros(c, device=probs.device))  # argmax, max p
        levels = 1 - o.alpha * self.thresholds.pow(o.gamma)
        psi = class_quantiles(conf.flatten(), label.flatten(), levels, self.thresholds)  # (C,)
        theta = ias_update(self.thresholds, psi, o.beta, o.max_threshold)
        selected, _ = fuse_pseudo_labels(probs, None, 1.0, theta)  # ignore where p < theta[argmax]
        keep = selected != IGNORE_INDEX
        step.pseudo_label = torch.where(keep, step.pseudo_label, torch.full_like(step.pseudo_label, IGNORE_INDEX))
        kept_label = label[keep]
        self.scratch(step).update(
            psi=psi,
            confidence_sum=torch.bincount(kept_label, weights=conf[keep].float(), minlength=c).float(),
            confidence_count=torch.bincount(kept_label, minlength=c).float(),
        )
        step.metrics["hiast/kept"] = float(keep.float().mean())
        step.metrics["hiast/threshold"] = float(theta.mean())

    def mix(self, step: Step) -> None:
        """HPLA: paste the hard-class pixels of a donor from the pool onto the target part of the mix."""
        if not self.options.paste or not self.pool or step.mix_image is None:
            return
        if tuple(self.pool["images"].shape[-2:]) != tuple(step.mix_image.shape[-2:]):
            return  # crop size changed since the pool was filled: the pool restarts in update()
        drawn = self.draw_donors(step.mix_image.shape[0], step.generator)
        if drawn is None:
            return
        donor, has_donor, hard = drawn
        image = self.pool["images"][donor].float() / 255  # (B, 3, H, W)
        label = self.pool["labels"][donor].long()  # (B, H, W), 255 = ignore
        lut = torch.zeros(256, dtype=torch.bool, device=label.device)
        lut[: self.num_classes] = hard
        paste = lut[label] & has_donor[:, None, None]
        if step.mix_mask is not None:
            paste &= ~step.mix_mask  # ClassMix source pixels stay on top
        if self.options.donor_strong_view:
            image = T.strong_view(image, step.generator)
        step.mix_image = torch.where(paste[:, None], image.to(step.mix_image.dtype), step.mix_image)
        step.mix_label = torch.where(paste, label, step.mix_label)
        weight = self.pool["weights"][donor][:, None, None].expand_as(paste)
        step.mix_weight = torch.where(paste, weight.to(step.mix_weight.dtype), step.mix_weight)
        self.scratch(step)["paste_mask"] = paste
        if step.mix_aligned is not None:
            step.mix_aligned = step.mix_aligned & ~paste  # donor pixels have no counterpart in the weak view
        step.metrics["hiast/pasted"] = float(paste.float().mean())

    def losses(self, step: Step) -> dict[str, Tensor]:
        o = self.options
        if step.mix_image is None or "logits" not in step.student_mix:
            return {}
        aligned = target_aligned(step)
        target = aligned if step.mix_mask is None else ~step.mix_mask  # pasted donor pixels are target pixels
        labelled = (step.mix_label != IGNORE_INDEX) & target
        unlabelled = (step.mix_label == IGNORE_INDEX) & aligned
        terms = region_losses(step.student_mix["logits"], step.teacher_target["probs"], labelled, unlabelled)
        weights = {"smooth": o.smooth_weight, "sharpen": o.sharpen_weight, "consistency": o.consistency_weight}
        return {k: weights[k] * v for k, v in terms.items() if weights[k]}

    def update(self, step: Step) -> None:
        """Thresholds and class confidences from all ranks' statistics; this step's crops join the pool."""
        o, ex = self.options, self.scratch(step)
        if "psi" not in ex:
            return
        psi = dist.all_reduce_mean(ex["psi"])
        self.thresholds = ias_update(self.thresholds, psi, o.beta, o.max_threshold)
        stats = dist.all_reduce_sum(torch.stack([ex["confidence_sum"], ex["confidence_count"]]))  # (2, C)
        present = stats[1] > 0
        mean = stats[0] / stats[1].clamp(min=1)
        m = o.confidence_momentum
        self.confidence_num = torch.where(present, m * self.confidence_num + (1 - m) * mean, self.confidence_num)
        self.confidence_den = torch.where(present, m * self.confidence_den + (1 - m), self.confidence_den)
        if o.paste and o.pool_size > 0:
            weight = step.pseudo_weight.flatten(1).float().mean(1)  # (B,) the image's pseudo-label quality
            label = step.pseudo_label.clamp(max=255).to(torch.uint8)
            self.push(
                dist.all_gather_cat(to_uint8(step.target_image)),
                dist.all_gather_cat(label),
                dist.all_gather_cat(weight),
            )

    # --- the donor pool ---
    def class_confidence(self) -> tuple[Tensor, Tensor]:
        """(C,) bias-corrected EMA of the class confidences and (C,) bool: classes with an estimate."""
        seen = self.confidence_den > 0
        return self.confidence_num / self.confidence_den.clamp(min=1e-12), seen

    def draw_donors(self, batch: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor] | None:
        """For each image: a hard class c ~ (1 - conf_c)^2, then a random pool entry holding c.

        Returns (donor index (B,), has a donor (B,) bool, hard-class mask (C,)), or None when nothing can be drawn.
        """
        o, n = self.options, self.pool["size"]
        confidence, seen = self.class_confidence()
        hard = hard_class_mask(confidence, seen, o.hard_classes)
        counts = self.pool["counts"][:n].float()  # (P, C) pixels of each class in each donor
        floor = torch.nanquantile(torch.where(counts > 0, counts, math.nan), o.drop_smallest, dim=0)  # (C,)
        eligible = (counts > 0) & (counts >= floor)  # NaN floors compare False
        drawable = hard & eligible.any(0)
        if not bool(drawable.any()):
            return None
        q = ((1 - confidence).clamp(min=0) ** 2) * drawable
        q = torch.where(q.sum() > 0, q, drawable.float())
        cls = torch.multinomial(q.double().cpu(), batch, replacement=True, generator=generator)  # (B,)
        candidates = eligible[:, cls.to(counts.device)].T  # (B, P)
        keys = torch.rand(batch, n, generator=generator).to(counts.device)
        donor = torch.where(candidates, keys, -1.0).argmax(1)
        return donor, candidates.any(1), hard

    def push(self, images: Tensor, labels: Tensor, weights: Tensor) -> None:
        """Ring buffer of the last `pool_size` crops: images (N,3,H,W) u8, labels (N,H,W) u8, weights (N,)."""
        p, c = self.options.pool_size, self.num_classes
        images, labels, weights = images[-p:], labels[-p:], weights[-p:]
        if not self.pool or self.pool["images"].shape[1:] != images.shape[1:]:
            dev = images.device
            self.pool = {
                "images": torch.zeros(p, *images.shape[1:], dtype=torch.uint8, device=dev),
                "labels": torch.full((p, *labels.shape[1:]), 255, dtype=torch.uint8, device=dev),
                "weights": torch.zeros(p, device=dev),
                "counts": torch.zeros(p, c, dtype=torch.long, device=dev),
                "size": 0,
                "next": 0,
            }
        n = images.shape[0]
        lab = labels.long().flatten(1)  # (N, H*W)
        lab = torch.where(lab < c, lab, c) + torch.arange(n, device=lab.device)[:, None] * (c + 1)
        counts = torch.bincount(lab.flatten(), minlength=n * (c + 1)).view(n, c + 1)[:, :c]
        slots = (self.pool["next"] + torch.arange(n, device=images.device)) % p
        for key, value in (("images", images), ("labels", labels), ("weights", weights.float()), ("counts", counts)):
            self.pool[key].index_copy_(0, slots, value.to(self.pool[key].device))
        self.pool["next"] = (self.pool["next"] + n) % p
        self.pool["size"] = min(p, self.pool["size"] + n)

    # --- state ---
    def state_dict(self) -> dict[str, Any]:
        return {
            "thresholds": self.thresholds,
            "confidence_num": self.confidence_num,
            "confidence_den": self.confidence_den,
            "pool": dict(self.pool),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"thresholds", "confidence_num", "confidence_den", "pool"} - set(state)
        if missing:
            raise ValueError(f"method hiast: checkpoint state lacks {sorted(missing)}")
        if state["thresholds"].shape != (self.num_classes,):
            raise ValueError(
                f"method hiast: checkpoint thresholds have shape {tuple(state['thresholds'].shape)}, "
                f"expected ({self.num_classes},) for this model's classes"
            )
        for key in ("thresholds", "confidence_num", "confidence_den"):
            setattr(self, key, state[key].to(self.device, torch.float32).clone())
        pool = dict(state["pool"])
        for key, value in pool.items():
            if isinstance(value, Tensor):
                pool[key] = value.to(self.device).clone()
        self.pool = pool

    def sync_state(self) -> None:
        """update() already combines all ranks (all-reduced statistics, gathered pool entries), so the state is equal
        everywhere; re-broadcasting rank 0's small tensors guards against reduction-order rounding."""
        for t in (self.thresholds, self.confidence_num, self.confidence_den):
            dist.broadcast_tensor(t)
