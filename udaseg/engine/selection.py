"""Label-free checkpoint scores and the collapse guard.

    scores = score_model(teacher, probe, device)     # {"agreement", "im", "snd", "entropy"}: higher = better
    guard = CollapseGuard(ratio=0.5, ...)
    signs = guard.check_window(iteration, row, class_names)   # pseudo-label diversity / coverage
    signs += guard.check_score(iteration, scores["agreement"])  # the score falling evaluation after evaluation

Criteria (each on a fixed probe set of target train images, whole images; docs/trust.md says why the default):
  agreement  class-averaged IoU between the model's class maps on a probe image and on a perturbed view of it
             (horizontal flip + colour jitter + blur, the same perturbation at every evaluation), over all C
             classes: a class neither view predicts counts 0, so a model that collapses onto k classes scores at
             most k / C. The default: on the benchmark its worst miss of the best checkpoint is the smallest.
  im         information maximisation (Musgrave et al. 2022's baseline): H(mean p) - mean H(p), over log C.
             Rewards confident pixels and a spread class marginal; insensitive to a rare class vanishing, and its
             marginal term can fall while accuracy still rises (the benchmark's 4x self-training run).
  snd        soft neighbourhood density (Saito et al., ICCV 2021; their segmentation code): per image, the mean
             entropy of the softmax (T = 0.05) of cosine similarities between 100 random pixels' probability
             vectors, self-similarity left out, over log(n - 1). Maximal for a collapsed model: all pixels alike.
  entropy    minus the mean pixel entropy, over log C: rewards over-confidence, so a collapsed model scores best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

CRITERIA = ("agreement", "im", "snd", "entropy")
SND_PIXELS, SND_TEMPERATURE = 100, 0.05  # Saito et al.'s segmentation setting


# ----------------------------------------------------------------------------- criteria on probabilities
def pixel_entropy(probs: Tensor) -> Tensor:
    """(B, C, H, W) probabilities -> (B, H, W) entropies (nats); 0 log 0 = 0."""
    return -(probs * probs.clamp(min=1e-12).log()).sum(1)


def entropy_score(probs: Tensor) -> float:
    """-mean pixel entropy / log C (in [-1, 0]); higher = more confident."""
    return -float(pixel_entropy(probs).mean()) / math.log(probs.shape[1])


def im_score(probs: Tensor) -> float:
    """(H(mean p) - mean H(p)) / log C, in [-1, 1]: confident pixels whose classes are spread over the image set."""
    mean = probs.mean(dim=(0, 2, 3))  # (C,)
    marginal = -float((mean * mean.clamp(min=1e-12).log()).sum())
    return (marginal - float(pixel_entropy(probs).mean())) / math.log(probs.shape[1])


def snd_score(probs: Tensor, pixels: Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """Soft neighbourhood density of the probability vectors at `pixels`, averaged over images.

    probs (B, C, H, W); pixels (B, n) flat pixel indices per image (n >= 2). Per image: rows of
    softmax(cos(p_i, p_j) / T) over j != i, their entropy averaged over i and divided by log(n - 1) (in [0, 1]).
    """
    b, c = probs.shape[:2]
    flat = probs.reshape(b, c, -1).transpose(1, 2)  # (B, HW, C)
    vec = torch.nn.functional.normalize(torch.gather(flat, 1, pixels[..., None].expand(-1, -1, c)), dim=2)
    sim = vec @ vec.transpose(1, 2) / temperature  # (B, n, n)
    n = sim.shape[-1]
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=sim.device), float("-inf"))
    p = sim.softmax(-1)
    ent = -(p * p.clamp(min=1e-12).log()).sum(-1)  # (B, n)
    return float(ent.mean()) / math.log(n - 1)


def class_agreement(a: Tensor, b: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class intersection and union counts (C,) of two class maps of the same shape."""
    a, b = a.reshape(-1).long(), b.reshape(-1).long()
    inter = torch.bincount(a[a == b], minlength=num_classes)[:num_classes]
    ca = torch.bincount(a, minlength=num_classes)[:num_classes]
    cb = torch.bincount(b, minlength=num_classes)[:num_classes]
    return inter, ca + cb - inter


def agreement_score(inter: Tensor, union: Tensor) -> float:
    """Mean over all C classes of intersection / union; a class in neither map counts 0 (not left out)."""
    iou = torch.where(union > 0, inter.double() / union.double().clamp(min=1), torch.zeros_like(inter.double()))
    return float(iou.mean())


# ----------------------------------------------------------------------------- scoring a model on the probe set
def perturb(images: Tensor, seed: int) -> Tensor:
    """The second view for `agreement`: colour jitter (0.3, always) and blur (sigma 0.7), then a horizontal flip.

    Deterministic from `seed`, so every evaluation perturbs each probe image the same way. (B, 3, H, W).
    """
    from udaseg.data import transforms as T

    gen = torch.Generator().manual_seed(seed)
    x = T.color_jitter(images, 0.3, gen, p=1.0)
    return T.gaussian_blur(x, 0.7).flip(-1)


@torch.no_grad()
def score_model(model, probe, device, batch_size: int = 4) -> dict[str, float]:
    """Every criterion of CRITERIA for `model` on `probe` (a diagnostics.ProbeSet); eval mode, then restored."""
    from udaseg.evaluate import predict

    was_training = model.training
    model.eval()
    try:
        parts = {"entropy": [], "im_probs": [], "snd": []}
        inter = union = None
        for start, images in probe.batches(batch_size):
            x = images.to(device)
            probs = predict(model, x)  # (b, C, H, W)
            other = predict(model, perturb(x, 1000 + start)).flip(-1)  # back in the first view's frame
            c = probs.shape[1]
            i, u = class_agreement(probs.argmax(1), other.argmax(1), c)
            inter, union = (i, u) if inter is None else (inter + i, union + u)
            gen = torch.Generator().manual_seed(2000 + start)
            hw = probs.shape[-2] * probs.shape[-1]
            pixels = torch.stack([torch.randperm(hw, generator=gen)[: min(SND_PIXELS, hw)] for _ in range(len(x))])
            parts["snd"].append((snd_score(probs, pixels.to(probs.device)), len(x)))
            parts["entropy"].append((float(pixel_entropy(probs).mean()), len(x)))
            parts["im_probs"].append(probs.mean(dim=(2, 3)).cpu())  # (b, C): class marginal per image
    finally:
        model.train(was_training)
    return combine(parts, inter, union, c)


def combine(parts: dict, inter: Tensor, union: Tensor, c: int) -> dict[str, float]:
    """Batch pieces -> the four scores (equal-size probe images: per-image means average exactly)."""
    n = sum(k for _, k in parts["entropy"])
    mean_ent = sum(v * k for v, k in parts["entropy"]) / n
    marginal = torch.cat(parts["im_probs"]).double().mean(0)  # (C,)
    h_marginal = -float((marginal * marginal.clamp(min=1e-12).log()).sum())
    return {
        "agreement": agreement_score(inter, union),
        "im": (h_marginal - mean_ent) / math.log(c),
        "snd": sum(v * k for v, k in parts["snd"]) / n,
        "entropy": -mean_ent / math.log(c),
    }


# ----------------------------------------------------------------------------- the collapse guard
@dataclass
class Sign:
    """One sign of collapse: what, when, which classes, and the numbers behind it."""

    kind: str  # diversity, coverage, score
    iteration: int
    message: str
    classes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "iteration": self.iteration, "message": self.message, "classes": self.classes}


@dataclass
class CollapseGuard:
    """Watches the pseudo-label windows and the label-free score for the signs of confirmation-bias collapse.

    diversity: effective number of pseudo-label classes (exp of the entropy of their distribution) below
               `ratio` x the source labels' one. The classes concerned: those of at least 0.5 % of the source
               pixels whose pseudo-label share fell under `vanish` x their source share.
    coverage:  the share of target pixels keeping a pseudo-label below `coverage_drop` x the first window's.
    score:     the label-free score lower than at the previous evaluation `patience` times in a row, and more
               than `min_drop` below the best so far.
    Each kind is reported once (the first time it shows); `signs` keeps them all for the summary.
    """

    ratio: float = 0.4
    vanish: float = 0.1
    coverage_drop: float = 0.5
    patience: int = 3
    min_drop: float = 0.02
    signs: list[Sign] = field(default_factory=list)
    first_coverage: float | None = None
    scores: list[float] = field(default_factory=list)

    def _fire(self, sign: Sign) -> list[Sign]:
        if any(s.kind == sign.kind for s in self.signs):
            return []
        self.signs.append(sign)
        return [sign]

    def check_window(self, iteration: int, row: dict, class_names: list[str]) -> list[Sign]:
        """Diversity and coverage signs from one diagnostics window (PseudoLabelStats.flush)."""
        fired: list[Sign] = []
        eff, src_eff = row["effective_classes"], row["source_effective_classes"]
        if not (math.isnan(eff) or math.isnan(src_eff)) and eff < self.ratio * src_eff:
            share, source = row["per_class"]["share"], row["per_class"]["source_share"]
            gone = [
                class_names[c]
                for c in range(len(share))
                if source[c] >= 0.005 and not math.isnan(share[c]) and share[c] < self.vanish * source[c]
            ]
            top = sorted(range(len(share)), key=lambda c: -(share[c] if not math.isnan(share[c]) else 0))[:3]
            held = ", ".join(f"{class_names[c]} {100 * share[c]:.0f} %" for c in top if share[c] > 0)
            fired += self._fire(
                Sign(
                    "diversity",
                    iteration,
                    f"pseudo-labels span {eff:.1f} effective classes against {src_eff:.1f} in the "
                    f"source labels; they concentrate on {held}",
                    gone,
                )
            )
        cov = row["coverage"]
        if self.first_coverage is None:
            self.first_coverage = cov
        elif cov < self.coverage_drop * self.first_coverage:
            fired += self._fire(
                Sign(
                    "coverage",
                    iteration,
                    f"only {100 * cov:.1f} % of target pixels keep a pseudo-label "
                    f"({100 * self.first_coverage:.1f} % in the first window)",
                )
            )
        return fired

    def check_score(self, iteration: int, score: float, criterion: str = "agreement") -> list[Sign]:
        """The score sign, after each evaluation's label-free score."""
        self.scores.append(score)
        s = self.scores
        if len(s) <= self.patience:
            return []
        falling = all(s[-k] < s[-k - 1] for k in range(1, self.patience + 1))
        if falling and max(s) - s[-1] > self.min_drop:
            return self._fire(
                Sign(
                    "score",
                    iteration,
                    f"the label-free score ({criterion}) fell at {self.patience} evaluations in a row: "
                    f"{s[-1]:.3f} now, {max(s):.3f} at best",
                )
            )
        return []

    def state_dict(self) -> dict:
        return {
            "signs": [x.as_dict() for x in self.signs],
            "first_coverage": self.first_coverage,
            "scores": list(self.scores),
        }

    def load_state_dict(self, state: dict) -> None:
        self.signs = [Sign(**x) for x in state.get("signs", [])]
        self.first_coverage = state.get("first_coverage")
        self.scores = list(state.get("scores", []))
