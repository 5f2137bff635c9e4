"""MIC: masked image consistency (Hoyer et al., CVPR 2023, arXiv 2212.01322; code: lhoyer/MIC).

One more loss on top of the common loop (`--method mic`, composable: `dida+mic`, `hiast+mic`, ...):

- The target crop (the weak view the teacher labelled) gets its own strong view (colour jitter + blur, MIC's
  "separatetrgaug"), then a random block mask: the image is cut into b x b patches from its top-left corner and
  each patch is hidden with probability `mask_ratio`, M_patch = [v > r], v ~ U(0, 1). Hidden pixels take the
  model's normalisation mean (ImageNet), i.e. 0 after the model's first layer, as MIC's `imgs * mask` on
  normalised images.
- The student predicts the masked image; the loss is the pseudo-label cross-entropy of that prediction against
  the teacher's pseudo-labels of the *full* image, weighted per pixel by their quality weight (DAFormer's
  fraction of confident pixels, `step.pseudo_weight`): L_m = mean_pixels q * CE(S(x_M), y_T), times `weight`.
  Whatever earlier plug-ins made of the pseudo-labels (DIDA's fused labels, HIAST's selection) is what MIC learns.

Small crops. MIC's b = 64 is given for 512 x 512 crops (an 8 x 8 grid). Shorter crop sides scale b down in
proportion, b' = max(1, round(b * min(H, W) / reference_size)), never up, so a 128 x 256 crop gets 16-pixel
patches (the same 8-patch grid along its short side) and context is hidden at the scale MIC hides it.
`reference_size: 0` keeps b fixed.

Where we differ from the official code: the masked view's pseudo-labels are the loop's (one EMA teacher, the same
ones the ClassMix CE uses), as in MIC's default `mask_pseudo_threshold = mask_alpha = "same"`; patches are aligned
to the top-left corner with a partial last row/column (the official rounds H / b and resizes the patch grid to the
image with nearest interpolation, so its patches are b +/- a few pixels). See docs/methods/mic.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from udaseg.data import transforms as T
from udaseg.methods.base import Method, Step, register_method
from udaseg.methods.common import weighted_cross_entropy
from udaseg.models.common import IMAGENET_MEAN


@dataclass
class MICOptions:
    patch_size: int = 64  # mask block size b in pixels (MIC: 64)
    mask_ratio: float = 0.7  # probability that a patch is hidden (MIC: 0.7)
    weight: float = 1.0  # lambda_m of the masked-image loss (MIC: 1)
    reference_size: int = 512  # crop side patch_size is given for (MIC's 512 x 512); shorter sides scale it down
    strong_view: bool = True  # colour jitter + blur before masking (MIC's "separatetrgaug")
    masked_norm_stats: bool = False  # let the masked images move BatchNorm's running statistics (see below)


def patch_size_for(size: tuple[int, int], patch_size: int, reference_size: int) -> int:
    """The patch side used on an (H, W) crop: b scaled by min(H, W) / reference_size, never up, at least 1."""
    if reference_size <= 0:
        return patch_size
    return max(1, min(patch_size, round(patch_size * min(size) / reference_size)))


def block_mask(
    batch: int, size: tuple[int, int], patch: int, ratio: float, generator: torch.Generator | None, device=None
) -> Tensor:
    """(B, H, W) bool, True = visible: b x b patches from the top-left corner, each hidden with probability ratio.

    One uniform draw per patch from `generator` (CPU), so the mask is a function of the step's random stream.
    """
    h, w = size
    grid = torch.rand(batch, math.ceil(h / patch), math.ceil(w / patch), generator=generator)  # (B, gh, gw)
    visible = grid > ratio
    visible = visible.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, :h, :w]  # (B, H, W)
    return visible.to(device) if device is not None else visible


def mask_image(image: Tensor, visible: Tensor) -> Tensor:
    """Hidden pixels of (B, 3, H, W) images take the normalisation mean (0 once the model normalises)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return torch.where(visible[:, None], image, mean)


@register_method
class MIC(Method):
    name = "mic"
    Options = MICOptions
    requires = ("self_training",)

    def __init__(
        self, options: MICOptions | None = None, num_classes: int = 19, feature_dim: int = 0, device: str = "cpu"
    ):
        super().__init__(options or MICOptions(), num_classes, feature_dim, device)
        o = self.options
        if not 0.0 <= o.mask_ratio < 1.0:
            raise ValueError(f"methods.mic.mask_ratio must be in [0, 1), got {o.mask_ratio}")
        if o.patch_size < 1:
            raise ValueError(f"methods.mic.patch_size must be >= 1 pixel, got {o.patch_size}")

    def masked_target(self, step: Step) -> tuple[Tensor, Tensor]:
        """The student's masked view of the target crop (B, 3, H, W) and its visibility mask (B, H, W)."""
        o, image = self.options, step.target_image
        if o.strong_view:
            image = T.strong_view(image, step.generator)
        patch = patch_size_for(tuple(image.shape[-2:]), o.patch_size, o.reference_size)
        visible = block_mask(image.shape[0], tuple(image.shape[-2:]), patch, o.mask_ratio, step.generator, image.device)
        return mask_image(image, visible), visible

    def losses(self, step: Step) -> dict[str, Tensor]:
        """L_m = weight * mean over labelled pixels of pseudo_weight * CE(student(masked target), pseudo_label)."""
        if step.target_image is None or step.pseudo_label is None or not self.options.weight:
            return {}
        masked, visible = self.masked_target(step)
        # (B, C, H, W) float32, with gradient; BatchNorm's running statistics kept unless masked_norm_stats
        logits = step.forward(step.student, masked, norm_stats=self.options.masked_norm_stats)["logits"]
        step.metrics["mic/hidden"] = float(1.0 - visible.float().mean())
        loss = weighted_cross_entropy(logits, step.pseudo_label, step.pseudo_weight)
        return {"masked_ce": self.options.weight * loss}
