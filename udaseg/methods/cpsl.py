"""CPSL: class-balanced pixel-level self-labeling (Li et al., CVPR 2022, arXiv 2203.09744), stage 1, online.

On top of the common loop:

- Pixel embeddings: a projection head on the decoder features, L2-normalised; the weak view is the EMA teacher's
  feature through a momentum copy of the head, the strong view the student's feature of the same target pixel in
  the ClassMix image.
- Prototypes: `prototypes_per_class` learnable unit vectors per class (trained at the head learning rate), and a
  momentum copy of them (the official `prototypes_ema`) used for rectification and consistency. They start from
  the class means of the first adaptation step's weak embeddings under its pseudo-labels (`class_feature_sums`).
- Online clustering: `pixels_per_image` weak embeddings per image plus a queue of past ones are scored by cosine
  against the prototypes and assigned by Sinkhorn-Knopp (`sinkhorn`, eps = 0.05, 3 iterations). Distribution
  alignment: the prototype marginal is the class distribution of the pseudo-labels, an EMA over steps.
- Self-labeling loss: CE(Sinkhorn assignment of the weak view, softmax(cos(weak, prototypes) / tau)).
- Source anchor (ours, below): CE of the class-max prototype cosines on labelled source pixels.
- Assignment consistency: KL(softmax(cos(weak, P_ema)/tau) || softmax(cos(strong, P_ema)/tau)).
- Label rectification: y = argmax_c w_c p_c, w = softmax(cos(weak, P_ema) / tau) (classes: the best prototype of
  each), p the class probabilities behind the pseudo-labels; the rectified labels feed the loop's CE.

On CUDA with train.amp the weak embeddings, the queue and the prototypes enter the kernels (Sinkhorn scores, class
sums) in `step.compute_dtype` (bf16/fp16, float32 accumulation); the plain-torch losses and the rectification stay
float32, and so does the state. See docs/methods/dida_cpsl.md.

What the official code (lslrh/CPSL) does differently (docs/methods/dida_cpsl.md), and what we do instead:
- The prior is a fixed file computed offline from the warm-up model; here it is estimated online (EMA of the
  class histogram of the pseudo-labels this plug-in receives), as the paper describes.
- Queue rows are re-scored there against un-normalised prototypes (not cosine) and the queue is shifted with a
  64 MB clone per image; here every score is a cosine and the queue is a ring buffer.
- The features there are the segmentation head's own bottleneck, kept class-discriminative by the segmentation
  loss. Ours are a separate projection head that no other loss trains, so we anchor it the same way: a prototype
  CE on class-balanced labelled source pixels, CE(softmax_c(max_{k of c} cos(f_src, P_k) / tau), y_src)
  (`source_weight`). Without it the self-labeling and consistency losses let the head and the prototypes drift
  from the classes and rectification relabels with them: on the synthetic benchmark (seed 0, 600 iterations from
  the shared warm-up, benchmarks/results/cpsl-ablation-cpu.md) CPSL with swapped-prediction self-labeling scored
  36.4 without the anchor and 41.8 with it; self-training alone 41.5. Rectification alone (no CPSL losses, no
  anchor) scored 41.7.
- The self-labeling loss scores the weak (EMA) embeddings, under no_grad as there, so it trains the prototypes
  only (`self_label_view = "weak"`); "strong" makes it SwAV's swapped prediction, which trains the student's
  embedding too (with the anchor, seed 0: 41.8 strong vs 42.0 weak, within seed noise; the default is the
  official one). The second copy of the loss computed from EMA logits is left out.
- Rectification there multiplies prototype weights with an offline soft pseudo-label file of the warm-up model
  (`--path_soft`); here p is the online teacher's probabilities (or what earlier plug-ins fused, e.g. DIDA's P').
- The warm-up there is an adversarial AdaptSegNet stage, and two distillation stages follow; those are not part
  of this plug-in (the loop's warm-up is source-only by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udaseg import distributed as dist
from udaseg.data.labels import IGNORE_INDEX
from udaseg.kernels import class_feature_sums, fuse_pseudo_labels, sinkhorn
from udaseg.methods.base import Method, Step, register_method
from udaseg.methods.common import (
    MomentumCopy,
    ProjectionHead,
    class_balanced_sample,
    embed,
    flatten_pixels,
    labels_to_features,
    sample_pixels,
    target_region,
)
from udaseg.models import upsample


@dataclass
class CPSLOptions:
    embed_dim: int = 256  # D of the pixel embeddings (official: the 256-d bottleneck of the DeepLabV2 head)
    prototypes_per_class: int = 1  # official: one prototype per class
    temperature: float = 0.08  # tau of the prototype softmax (official)
    epsilon: float = 0.05  # Sinkhorn entropy temperature (official, SwAV)
    sinkhorn_iters: int = 3  # (official, SwAV)
    pixels_per_image: int = 256  # weak embeddings per image clustered each step and pushed to the queue (official fbs)
    queue_size: int = 65536  # feature queue length (official)
    self_label_weight: float = 0.1  # weight of the self-labeling loss (official SL_lambda)
    self_label_view: str = "weak"  # view scored against the prototypes in that loss: weak (official: the EMA
    #                                features, so it trains the prototypes only) or strong (SwAV's swapped prediction)
    consistency_weight: float = 5.0  # weight of the weak/strong assignment consistency (official KL_consist)
    consistency_pixels: int = 4096  # target pixels per step in the consistency loss (official: every pixel)
    source_weight: float = 1.0  # weight of the prototype CE on labelled source pixels (ours, see the docstring)
    source_pixels_per_class: int = 64  # source pixels per class and step in that loss
    rectify: bool = True  # rectify the pseudo-labels by prototype similarity
    prior_momentum: float = 0.99  # EMA of the pseudo-label class distribution (official: a fixed file; ours)
    prior_floor: float = 1e-4  # smallest marginal of a class, so that Sinkhorn's marginal stays > 0 (ours)
    ema: float = 0.999  # momentum of the key head and prototypes (official prototypes_ema: 0.999)


class Prototypes(nn.Module):
    """K = C * P learnable prototypes (K, D), class-major (prototype k belongs to class k // P); used normalised."""

    def __init__(self, count: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(torch.randn(count, dim), dim=1))

    def forward(self) -> Tensor:
        return F.normalize(self.weight, dim=1)


def cosines(emb: Tensor, protos: Tensor) -> Tensor:
    """(N, K) = emb @ protos.T in float32: the plain-torch losses and the rectification. Their gradients are
    differences of two near-equal softmaxes at tau = 0.08, which bf16 cosines (error ~4e-3) would move by ~5 %."""
    return emb.float() @ protos.float().T


@register_method
class CPSL(Method):
    name = "cpsl"
    Options = CPSLOptions
    requires = ("self_training",)

    def __init__(
        self, options: CPSLOptions | None = None, num_classes: int = 19, feature_dim: int = 0, device: str = "cpu"
    ):
        super().__init__(options or CPSLOptions(), num_classes, feature_dim, device)
        o = self.options
        if o.self_label_view not in ("weak", "strong"):
            raise ValueError(f"methods.cpsl.self_label_view: {o.self_label_view!r} is not one of weak, strong")
        self.head = ProjectionHead(feature_dim, o.embed_dim).to(self.device)
        self.prototypes = Prototypes(num_classes * o.prototypes_per_class, o.embed_dim).to(self.device)
        self.key_head = MomentumCopy(self.head)
        self.key_prototypes = MomentumCopy(self.prototypes)
        self.queue = torch.zeros(o.queue_size, o.embed_dim, device=self.device)  # ring buffer of weak embeddings
        self.queue_ptr, self.queue_filled = 0, 0
        self.prior = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64, device=self.device)
        self.prior_steps = 0  # updates of the prior so far (the first one replaces the uniform start)
        self.initialized = False  # prototypes set from class means yet
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None  # (rows, valid flags, class counts) under DDP

    # --- pieces ---
    def marginal(self) -> Tensor:
        """(K,) Sinkhorn column marginal: the class prior, floored, shared equally by a class's prototypes."""
        p = self.prior.clamp(min=self.options.prior_floor)
        p = (p / p.sum()).repeat_interleave(self.options.prototypes_per_class) / self.options.prototypes_per_class
        return p.float()

    def class_logits(self, emb: Tensor, protos: Tensor) -> Tensor:
        """(N, C) float32: max over each class's prototypes of cos(emb, P) / tau."""
        cos = cosines(emb, protos)  # (N, K)
        return cos.view(emb.shape[0], self.num_classes, -1).amax(dim=2) / self.options.temperature

    def class_weights(self, emb: Tensor) -> Tensor:
        """w (N, C) = softmax_c(max_{k of c} cos(emb, P_ema[k]) / tau)."""
        return self.class_logits(emb, self.key_prototypes.module()).softmax(dim=1)

    @torch.no_grad()
    def init_prototypes(self, weak: Tensor, labels: Tensor, generator, dt: torch.dtype) -> None:
        """Prototypes <- class means of the weak embeddings (all ranks), a little jitter between a class's P."""
        sums, counts = class_feature_sums(weak.to(dt), labels.reshape(-1), self.num_classes)  # (C, D), (C,)
        sums, counts = dist.all_reduce_sum(sums), dist.all_reduce_sum(counts)
        p = self.options.prototypes_per_class
        means = (sums.float() / counts.clamp(min=1)[:, None].float()).repeat_interleave(p, dim=0)  # (K, D)
        jitter = 0.01 * torch.randn(means.shape, generator=generator).to(means.device) if p > 1 else 0.0
        present = (counts > 0).repeat_interleave(p)[:, None]
        new = torch.where(present, F.normalize(means + jitter, dim=1), self.prototypes.weight)
        self.prototypes.weight.copy_(new)
        self.key_prototypes.module.weight.copy_(new)
        self.initialized = True

    # --- the step ---
    def pseudo_labels(self, step: Step) -> None:
        """Rectify the pseudo-labels by prototype similarity; keep the incoming class histogram for the prior."""
        o, c = self.options, self.num_classes
        keys = embed(step, self.key_head, step.teacher_target["features"], torch.float32)  # (B, D, h, w)
        b, _, h, w = keys.shape
        weak = flatten_pixels(keys)  # (N, D)
        incoming = step.pseudo_label  # (B, H, W)
        if not self.initialized:
            self.init_prototypes(weak, labels_to_features(incoming, (h, w), c), step.generator, step.compute_dtype)
        ignored = incoming == IGNORE_INDEX
        counts = torch.bincount(incoming[~ignored], minlength=c)  # (C,) class histogram of the pseudo-labels
        if o.rectify:
            probs = step.class_probs  # (B, C, H, W): the teacher's, or what an earlier plug-in fused (DIDA's P')
            w_map = self.class_weights(weak).view(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, h, w)
            rect = upsample(w_map, probs.shape[-2:]) * probs  # (B, C, H, W)
            rect = rect / rect.sum(dim=1, keepdim=True).clamp(min=1e-12)
            label, confidence = fuse_pseudo_labels(rect, None, 1.0, rect.new_zeros(c))
            step.metrics["cpsl/relabelled"] = float(((label != incoming) & ~ignored).float().mean())
            step.pseudo_label = torch.where(ignored, IGNORE_INDEX, label)
            step.pseudo_confidence = confidence
            step.class_probs = rect
        self.scratch(step).update(weak=weak, size=(h, w), counts=counts)

    def source_loss(self, step: Step, protos: Tensor) -> Tensor:
        """CE(softmax_c(max_k cos(f_src, P_k) / tau), y_src) on class-balanced labelled source pixels."""
        o = self.options
        emb_map = embed(step, self.head, step.student_source["features"], torch.float32)  # (B, D, h, w)
        labels = labels_to_features(step.source_label, emb_map.shape[-2:], self.num_classes).reshape(-1)
        idx = class_balanced_sample(labels, o.source_pixels_per_class, self.num_classes, step.generator)
        if idx.numel() == 0:
            return emb_map.sum() * 0.0 + protos.sum() * 0.0
        return F.cross_entropy(self.class_logits(flatten_pixels(emb_map)[idx], protos), labels[idx])

    def losses(self, step: Step) -> dict[str, Tensor]:
        o, ex = self.options, self.scratch(step)
        if not step.student_mix or "weak" not in ex:
            return {}
        region = target_region(step, ex["size"])  # (B, h, w)
        strong = flatten_pixels(embed(step, self.head, step.student_mix["features"], torch.float32))  # (N, D)
        protos = self.prototypes()  # (K, D), differentiable
        out = {"proto_source": o.source_weight * self.source_loss(step, protos)} if o.source_weight > 0 else {}
        idx = sample_pixels(region, region.shape[0] * o.pixels_per_image, step.generator)
        weak = ex["weak"][idx]  # (n, D)
        ex["sampled"] = weak  # pushed to the queue in update()
        assign = self.assignments(weak, protos.detach(), step.compute_dtype)  # (n, K)
        scored = weak if o.self_label_view == "weak" else strong[idx]  # (n, D)
        log_p = (cosines(scored, protos) / o.temperature).log_softmax(dim=1)  # (n, K)
        self_label = -(assign * log_p).sum(dim=1).mean() if idx.numel() else protos.sum() * 0.0
        idx = sample_pixels(region, o.consistency_pixels, step.generator)
        key_protos = self.key_prototypes.module()  # (K, D)
        target = (cosines(ex["weak"][idx], key_protos) / o.temperature).softmax(dim=1)  # (n, K)
        log_q = (cosines(strong[idx], key_protos) / o.temperature).log_softmax(dim=1)
        consistency = F.kl_div(log_q, target, reduction="batchmean") if idx.numel() else strong.sum() * 0.0
        return {
            **out,
            "self_label": o.self_label_weight * self_label,
            "consistency": o.consistency_weight * consistency,
        }

    @torch.no_grad()
    def assignments(self, weak: Tensor, protos: Tensor, dt: torch.dtype = torch.float32) -> Tensor:
        """Sinkhorn assignment (n, K) of this step's weak embeddings, clustered together with the queue.

        The queue (float32 state), the batch and the prototypes are read in `dt` (compute_dtype: the scores GEMM on
        tensor cores under AMP, float32 accumulation); Sinkhorn itself works in float32.
        """
        if weak.shape[0] == 0:
            return weak.new_zeros(0, protos.shape[0])
        rows = torch.cat([self.queue[: self.queue_filled].to(dt), weak.to(dt)])  # (filled + n, D)
        scores = rows @ protos.to(dt).T  # (filled + n, K), float32 accumulation, rounded to dt
        q = sinkhorn(scores, self.marginal(), self.options.epsilon, self.options.sinkhorn_iters)
        return q[-weak.shape[0] :]

    def update(self, step: Step) -> None:
        """Momentum copies, then queue push and prior EMA (now, or in sync_state after gathering under DDP)."""
        o = self.options
        self.key_head.update(self.head, o.ema)
        self.key_prototypes.update(self.prototypes, o.ema)
        ex = self.scratch(step)
        if "weak" not in ex:
            return
        rows = ex.get("sampled", self.queue.new_zeros(0, o.embed_dim))
        if dist.world_size() == 1:
            self.push(rows)
            self.update_prior(ex["counts"])
            return
        k = step.target_image.shape[0] * o.pixels_per_image  # fixed size for all_gather
        padded, valid = rows.new_zeros(k, rows.shape[1]), torch.zeros(k, dtype=torch.bool, device=rows.device)
        padded[: rows.shape[0]], valid[: rows.shape[0]] = rows, True
        self._pending = (padded, valid, ex["counts"])

    @torch.no_grad()
    def push(self, rows: Tensor) -> None:
        """Enqueue (n, D) rows into the ring buffer, overwriting the oldest."""
        size = self.queue.shape[0]
        rows = rows[-size:]
        n = rows.shape[0]
        if n == 0:
            return
        slots = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % size
        self.queue[slots] = rows.to(self.queue.dtype)
        self.queue_ptr = (self.queue_ptr + n) % size
        self.queue_filled = min(self.queue_filled + n, size)

    @torch.no_grad()
    def update_prior(self, counts: Tensor) -> None:
        """prior <- m prior + (1 - m) histogram / total, m = min(1 - 1/(n+1), prior_momentum) (first: replace)."""
        total = counts.sum()
        if total <= 0:
            return
        m = min(1.0 - 1.0 / (self.prior_steps + 1), self.options.prior_momentum)
        self.prior.mul_(m).add_(counts.to(self.prior.dtype) / total, alpha=1.0 - m)
        self.prior_steps += 1

    # --- state ---
    def modules(self) -> dict[str, nn.Module]:
        return {"head": self.head, "prototypes": self.prototypes}

    def state_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue.clone(),
            "queue_ptr": self.queue_ptr,
            "queue_filled": self.queue_filled,
            "prior": self.prior.clone(),
            "prior_steps": self.prior_steps,
            "initialized": self.initialized,
            "key_head": self.key_head.state_dict(),
            "key_prototypes": self.key_prototypes.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["queue"].shape) != tuple(self.queue.shape):
            raise ValueError(
                f"methods.cpsl: checkpoint queue has shape {tuple(state['queue'].shape)}, this run "
                f"expects {tuple(self.queue.shape)} (queue_size, embed_dim)"
            )
        self.queue.copy_(state["queue"])
        self.queue_ptr, self.queue_filled = int(state["queue_ptr"]), int(state["queue_filled"])
        self.prior.copy_(state["prior"])
        self.prior_steps, self.initialized = int(state["prior_steps"]), bool(state["initialized"])
        self.key_head.load_state_dict(state["key_head"])
        self.key_prototypes.load_state_dict(state["key_prototypes"])

    def sync_state(self) -> None:
        """Push every rank's rows in rank order, sum the class histograms; rank 0's head statistics and key head."""
        if dist.world_size() == 1:
            return
        if self._pending is not None:
            rows, valid, counts = self._pending
            self.push(dist.all_gather_cat(rows)[dist.all_gather_cat(valid)])
            self.update_prior(dist.all_reduce_sum(counts))
            self._pending = None
        dist.broadcast_module(self.head, buffers_only=True)
        self.key_head.broadcast()
