"""DIDA: dual-level interaction for domain adaptive semantic segmentation (Yao & Li, ICCV-W 2023, arXiv 2307.07972).

On top of the common loop (whose pseudo-label cross-entropy is DIDA's semantic-level consistency):

- Pixel embeddings: a projection head on the decoder features, L2-normalised. The weak view of a target pixel is
  the EMA teacher's feature through a momentum copy of the head; the strong view is the student's feature of the
  same pixel in the ClassMix image (only target pixels of the mix: source-pasted pixels have no weak twin).
- Labelled instance bank: one queue of `bank_per_class` embeddings per class (labels -1 = empty slot), written
  online after every step from source pixels (ground truth) and confident target pixels (fused pseudo-labels).
  Dynamic update: per class and step at most `writes_per_class` entries, the most informative first: pixels on a
  class boundary (>= 2 labels in their 3x3 neighbourhood, the official BPS rule) and pixels the bank finds hard
  (low instance probability q_own of their own class, from `bank_class_logsumexp`).
- Instance level: s(v) = softmax_m(f_v . b_m / tau); loss = CE(t, s(strong)) (`instance_consistency_loss`).
- Cross-level interaction. Scatter: q_c = sum_{m: label m = c} s_m(weak) = softmax_c(LSE_c) is fused with the
  class probabilities, P' = alpha p + (1 - alpha) q, and the pseudo-labels are regenerated from P'
  (`fuse_pseudo_labels`). Gather: the instance target is t_m ∝ s_m(weak) P'_{label m}.

On CUDA with train.amp the embeddings, the bank and the gather weights reach the kernels in `step.compute_dtype`
(bf16/fp16; the kernels accumulate in float32); the bank is stored in float32. See docs/methods/dida_cpsl.md.

What the official code (RainJamesY/DIDA) does differently, and why we do not copy it (docs/methods/dida_cpsl.md):
- Scatter is disabled there (a_smooth = 1, and the aggregate adds q to P instead of blending): the released model
  trains on plain DAFormer pseudo-labels. We run both directions, as the paper describes.
- Similarities there are raw dot products of un-normalised, non-negative features, L1-normalised, with no
  temperature; the gather multiplies by the student's raw (possibly negative) logits. We use L2-normalised
  embeddings, a temperature softmax, and the fused probabilities P' (non-negative) as gather weights.
- The bank there is a fixed 300-entry file of per-image class means (loaded from a hard-coded path, the SYNTHIA
  bank even for GTA runs), EMA-updated every 50 iterations with a per-pixel Python loop and an np.savez to an
  absolute path every iteration. Ours is filled online, per-class queues, vectorised, checkpointed, synced
  under DDP. Informative selection (boundary pixels) is dead code there; here it is the update rule.
- The instance loss there covers every pixel of the mixed image, source-pasted ones included (their "weak view"
  is a different image). Ours samples `instance_pixels` target pixels of the mix per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udaseg import distributed as dist
from udaseg.data.labels import IGNORE_INDEX
from udaseg.kernels import bank_class_logsumexp, fuse_pseudo_labels, instance_consistency_loss
from udaseg.methods.base import Method, Step, register_method
from udaseg.methods.common import (
    MomentumCopy,
    ProjectionHead,
    class_balanced_sample,
    embed,
    flatten_pixels,
    labels_to_features,
    pool_probs,
    sample_pixels,
    target_region,
    top_per_class,
)
from udaseg.models import upsample


@dataclass
class DIDAOptions:
    embed_dim: int = 256  # D of the pixel embeddings (official: the 256-d DAFormer fused decoder feature)
    temperature: float = 0.1  # tau of the bank softmax (official: none, raw dot products; 0.1 is the usual
    #                           pixel-contrastive value, e.g. Wang et al. 2021)
    instance_weight: float = 0.5  # weight of the instance-level loss (official: 0.5 * L_in)
    alpha: float = 0.7  # scatter blend P' = alpha p + (1 - alpha) q (official: a_smooth = 1, i.e. scatter off;
    #                     the paper's value was not available to us)
    scatter: bool = True  # regenerate pseudo-labels from P' (cross-level scatter)
    gather: bool = True  # weight the instance target by P' of each entry's class (cross-level gather)
    bank_per_class: int = 128  # queue length M_c per class (official: 300 entries in all, about 16 per class, of
    #                            per-image class means; we store pixel instances, so longer queues)
    writes_per_class: int = 8  # at most this many entries written per class per step and rank (official: one
    #                            boundary pixel per class, every 50 iterations)
    candidates_per_class: int = 256  # pixels per class and domain scored for the dynamic update each step
    bank_threshold: float = 0.968  # fused confidence a target pixel needs to enter the bank (DAFormer's threshold)
    instance_pixels: int = 4096  # target pixels per step in the instance loss (official: all 2 x 512 x 512)
    ema: float = 0.999  # momentum of the key head (the papers' EMA teacher momentum; set it like train.ema)


def boundary_mask(labels: Tensor, num_classes: int) -> Tensor:
    """(B, h, w) labels -> (B, h, w) bool: labelled pixels whose 3x3 neighbourhood holds >= 2 distinct classes.

    Ignored pixels are neither boundaries nor count as a class (max-pool of labels vs min-pool of labels).
    """
    valid = labels < num_classes
    hi = torch.where(valid, labels, -1).float()[:, None]  # ignored never win the max
    lo = torch.where(valid, labels, num_classes).float()[:, None]  # nor the min
    most = F.max_pool2d(hi, 3, stride=1, padding=1)
    least = -F.max_pool2d(-lo, 3, stride=1, padding=1)
    return (most != least)[:, 0] & valid


@register_method
class DIDA(Method):
    name = "dida"
    Options = DIDAOptions
    requires = ("self_training",)

    def __init__(
        self, options: DIDAOptions | None = None, num_classes: int = 19, feature_dim: int = 0, device: str = "cpu"
    ):
        super().__init__(options or DIDAOptions(), num_classes, feature_dim, device)
        o = self.options
        if not 1 <= o.writes_per_class <= o.bank_per_class:
            raise ValueError(
                f"methods.dida.writes_per_class must be in [1, bank_per_class={o.bank_per_class}], "
                f"got {o.writes_per_class}"
            )
        if not 0.0 <= o.alpha <= 1.0:
            raise ValueError(f"methods.dida.alpha must be in [0, 1], got {o.alpha}")
        self.head = ProjectionHead(feature_dim, o.embed_dim).to(self.device)
        self.key_head = MomentumCopy(self.head)
        slots = num_classes * o.bank_per_class
        self.bank = torch.zeros(slots, o.embed_dim, device=self.device)  # (C * M_c, D), class c in its own block
        self.bank_labels = torch.full((slots,), -1, dtype=torch.int64, device=self.device)  # -1 = empty slot
        self.bank_ptr = torch.zeros(num_classes, dtype=torch.int64, device=self.device)  # next slot per class
        self._pending: tuple[Tensor, Tensor] | None = None  # this rank's writes, applied by sync_state under DDP

    # --- the step ---
    def bank_probs(self, query: Tensor) -> Tensor | None:
        """q (N, C) float32: the bank softmax of each query summed per class; None while the bank is empty.

        The bank (float32 state) is read in the query's dtype: bf16/fp16 queries use tensor cores.
        """
        if not bool((self.bank_labels >= 0).any()):
            return None
        bank = self.bank.to(query.dtype)
        lse = bank_class_logsumexp(query, bank, self.bank_labels, self.num_classes, self.options.temperature)
        return lse.softmax(dim=1)  # classes without entries: exp(-inf) = 0

    def pseudo_labels(self, step: Step) -> None:
        """Scatter: fuse the teacher's class probabilities with the bank's class distribution of the weak view."""
        o, c = self.options, self.num_classes
        probs = step.class_probs  # (B, C, H, W), float32
        keys = embed(step, self.key_head, step.teacher_target["features"])  # (B, D, h, w) in compute_dtype
        b, _, h, w = keys.shape
        weak = flatten_pixels(keys)  # (N, D), N = B*h*w
        q = self.bank_probs(weak)  # (N, C) or None
        weights = flatten_pixels(pool_probs(probs, (h, w)))  # (N, C): P' at feature resolution, gather weights
        if q is not None and o.scatter:
            q_map = q.view(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, h, w)
            q_up = upsample(q_map, probs.shape[-2:])  # (B, C, H, W), still a distribution per pixel
            # float32 here: the probabilities come float32 from the loop, and a cast pass would cost more bytes
            # than this memory-bound op saves (and near-1 thresholds are not representable in bf16)
            label, confidence = fuse_pseudo_labels(probs, q_up, o.alpha, probs.new_zeros(c))
            ignored = step.pseudo_label == IGNORE_INDEX  # what earlier plug-ins left out stays out
            step.metrics["dida/relabelled"] = float(((label != step.pseudo_label) & ~ignored).float().mean())
            step.pseudo_label = torch.where(ignored, IGNORE_INDEX, label)
            step.pseudo_confidence = confidence
            step.class_probs = o.alpha * probs + (1.0 - o.alpha) * q_up  # P': what later plug-ins refine
            weights = o.alpha * weights + (1.0 - o.alpha) * q
        confident = (step.pseudo_confidence >= o.bank_threshold) & (step.pseudo_label != IGNORE_INDEX)
        bank_label = labels_to_features(torch.where(confident, step.pseudo_label, IGNORE_INDEX), (h, w), c)
        self.scratch(step).update(weak=weak, weights=weights, size=(h, w), bank_label=bank_label)

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Instance level with gather: CE between the P'-weighted weak-view target and the strong view's softmax."""
        o, ex = self.options, self.scratch(step)
        if not step.student_mix or "weak" not in ex:
            return {}
        strong_map = embed(step, self.head, step.student_mix["features"])  # (B, D, h, w), differentiable
        idx = sample_pixels(target_region(step, ex["size"]), o.instance_pixels, step.generator)  # (n,)
        strong = flatten_pixels(strong_map)[idx]  # (n, D)
        weights = ex["weights"][idx] if o.gather else torch.ones_like(ex["weights"][idx])  # (n, C)
        dt = strong.dtype  # compute_dtype: embeddings, bank and gather weights in one dtype, float32 loss out
        loss = instance_consistency_loss(
            ex["weak"][idx], strong, self.bank.to(dt), self.bank_labels, weights.to(dt), o.temperature
        )  # (n,)
        # mean over sampled pixels; 0 * sum keeps the head in the graph when no pixel is sampled (same grads
        # on every rank under DDP)
        total = loss.mean() if loss.numel() else strong_map.sum() * 0.0
        return {"instance": o.instance_weight * total}

    def update(self, step: Step) -> None:
        """Key head EMA, then the dynamic bank update (applied now, or in sync_state after gathering under DDP)."""
        self.key_head.update(self.head, self.options.ema)
        if "weak" not in self.scratch(step):
            return
        emb, lab = self.select_writes(step)
        if dist.world_size() == 1:
            self.write(emb, lab)
        else:
            self._pending = self.pad_writes(emb, lab)

    # --- the bank ---
    def candidates(self, keys: Tensor, labels: Tensor, generator) -> tuple[Tensor, Tensor, Tensor]:
        """Up to candidates_per_class random pixels per class: embeddings (n, D), labels (n,), boundary flags (n,)."""
        flat = labels.reshape(-1)
        idx = class_balanced_sample(flat, self.options.candidates_per_class, self.num_classes, generator)
        boundary = boundary_mask(labels, self.num_classes).reshape(-1)
        return flatten_pixels(keys)[idx], flat[idx], boundary[idx]

    def select_writes(self, step: Step) -> tuple[Tensor, Tensor]:
        """Source pixels (ground truth) and confident target pixels; per class the most informative first.

        Informativeness = 1[class boundary] + (1 - q_own), q_own the bank's instance probability of the pixel's
        own class (1 - q_own = 1 for a class the bank does not hold yet). Source keys are the key head on the
        student's source features of this step (no extra forward pass).
        """
        ex, c = self.scratch(step), self.num_classes
        src_keys = embed(step, self.key_head, step.student_source["features"].detach())  # (B, D, h, w)
        src_label = labels_to_features(step.source_label, src_keys.shape[-2:], c)
        tgt_keys = ex["weak"].view(*ex["bank_label"].shape, -1).permute(0, 3, 1, 2)  # (B, D, h, w)
        parts = [
            self.candidates(src_keys, src_label, step.generator),
            self.candidates(tgt_keys, ex["bank_label"], step.generator),
        ]
        emb, lab, boundary = (torch.cat(p) for p in zip(*parts))
        shuffle = torch.randperm(lab.numel(), generator=step.generator).to(lab.device)  # random tie-breaking
        emb, lab, boundary = emb[shuffle], lab[shuffle], boundary[shuffle]
        q = self.bank_probs(emb)
        q_own = q.gather(1, lab[:, None])[:, 0] if q is not None else torch.zeros_like(emb[:, 0])
        pos, _ = top_per_class(lab, boundary.float() + (1.0 - q_own), self.options.writes_per_class)
        return emb[pos], lab[pos]

    @torch.no_grad()
    def write(self, emb: Tensor, lab: Tensor) -> None:
        """Enqueue (n, D) entries with labels (n,) (labels < 0 are padding): each class wraps in its own queue."""
        keep = lab >= 0
        emb, lab = emb[keep], lab[keep]
        if lab.numel() == 0:
            return
        m = self.options.bank_per_class
        order = torch.argsort(lab, stable=True)
        cls = lab[order]
        rank = torch.arange(cls.numel(), device=cls.device) - torch.searchsorted(cls, cls, right=False)
        slot = cls * m + (self.bank_ptr[cls] + rank) % m  # distinct: at most m writes per class per call
        self.bank[slot] = emb[order].to(self.bank.dtype)
        self.bank_labels[slot] = cls
        self.bank_ptr.add_(torch.bincount(cls, minlength=self.num_classes)).remainder_(m)

    def pad_writes(self, emb: Tensor, lab: Tensor) -> tuple[Tensor, Tensor]:
        """Fixed-size (C * writes_per_class) buffers, so every rank contributes equal shapes to all_gather."""
        k = self.num_classes * self.options.writes_per_class
        out_emb = emb.new_zeros(k, emb.shape[1])
        out_lab = torch.full((k,), -1, dtype=torch.int64, device=lab.device)
        out_emb[: emb.shape[0]], out_lab[: lab.shape[0]] = emb, lab
        return out_emb, out_lab

    # --- state ---
    def modules(self) -> dict[str, nn.Module]:
        return {"head": self.head}

    def state_dict(self) -> dict[str, Any]:
        return {
            "bank": self.bank.clone(),
            "bank_labels": self.bank_labels.clone(),
            "bank_ptr": self.bank_ptr.clone(),
            "key_head": self.key_head.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["bank"].shape) != tuple(self.bank.shape):
            raise ValueError(
                f"methods.dida: checkpoint bank has shape {tuple(state['bank'].shape)}, this run "
                f"expects {tuple(self.bank.shape)} (num_classes x bank_per_class, embed_dim)"
            )
        self.bank.copy_(state["bank"])
        self.bank_labels.copy_(state["bank_labels"])
        self.bank_ptr.copy_(state["bank_ptr"])
        self.key_head.load_state_dict(state["key_head"])

    def sync_state(self) -> None:
        """Apply every rank's writes in rank order on every rank; rank 0's head statistics and key head."""
        if dist.world_size() == 1:
            return
        if self._pending is not None:
            emb, lab = (dist.all_gather_cat(t) for t in self._pending)
            k = self._pending[1].shape[0]
            for r in range(dist.world_size()):  # rank by rank: at most writes_per_class per class per call
                self.write(emb[r * k : (r + 1) * k], lab[r * k : (r + 1) * k])
            self._pending = None
        dist.broadcast_module(self.head, buffers_only=True)
        self.key_head.broadcast()
