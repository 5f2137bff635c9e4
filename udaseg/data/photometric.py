"""Photometric and style randomisation of source images: pure functions on tensors, driven by a CPU generator.

A source model trained on one rendering style overfits its colours and textures; randomising them during the
source-only warm-up makes the teacher that starts adaptation less wrong on the target (domain randomisation,
Yue et al. 2019; the colour/blur/grayscale family of SimCLR-style augmentation; FDA, Yang & Soatto, CVPR 2020).

    x = randomize(img, options, gen, style=target_img)   # (3, H, W) in [0, 1] -> same shape, options: AugmentConfig

Images are float `(3, H, W)` or `(B, 3, H, W)` in [0, 1]. Every random choice comes from `gen` (a CPU
`torch.Generator`), in a fixed order, so a crop's augmentation is a pure function of the sampler's seed; an option
left at 0 draws nothing, so turning options off reproduces the plain geometric view bit for bit.
"""

from __future__ import annotations

import torch

from udaseg.data import transforms as T


def grayscale(img: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601) copied to the three channels. (3, H, W) or (B, 3, H, W) -> same shape."""
    x, batched = (img, True) if img.dim() == 4 else (img.unsqueeze(0), False)
    g = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
    return g if batched else g.squeeze(0)


def channel_shuffle(img: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """RGB channels in `order` (a permutation of 0, 1, 2). (3, H, W) or (B, 3, H, W)."""
    return img.index_select(-3, order.to(img.device))


def fda(img: torch.Tensor, style: torch.Tensor, beta: float) -> torch.Tensor:
    """Fourier domain adaptation: `img`'s low-frequency amplitude replaced by `style`'s, `img`'s phase kept.

    img (3, H, W); style (3, h, w), resized to (H, W) first. The swapped window is the centred square of
    half-width floor(beta * min(H, W)) around the zero frequency (of the fftshift-ed spectrum), as in Yang & Soatto's
    `low_freq_mutate`. beta = 0 leaves the image unchanged. Returns (3, H, W) clamped to [0, 1].
    """
    h, w = img.shape[-2:]
    if beta <= 0:
        return img
    b = int(beta * min(h, w))
    style = T.resize(style, (h, w))
    f_img = torch.fft.fftshift(torch.fft.fft2(img.float()), dim=(-2, -1))
    f_sty = torch.fft.fftshift(torch.fft.fft2(style.float()), dim=(-2, -1))
    amp, phase = f_img.abs(), f_img.angle()
    cy, cx = h // 2, w // 2
    window = (..., slice(max(cy - b, 0), cy + b + 1), slice(max(cx - b, 0), cx + b + 1))
    amp[window] = f_sty.abs()[window]
    mixed = torch.polar(amp, phase)
    out = torch.fft.ifft2(torch.fft.ifftshift(mixed, dim=(-2, -1))).real
    return out.clamp(0, 1).to(img.dtype)


def randomize(img: torch.Tensor, options, gen: torch.Generator, style: torch.Tensor | None = None) -> torch.Tensor:
    """One source crop's photometric/style randomisation: FDA, colour jitter, grayscale, channel shuffle, blur.

    img (3, H, W). `options` has the fields of config.AugmentConfig (probabilities and strengths; 0 = off);
    `style` is a target image for FDA (needed only when options.fda > 0). Returns (3, H, W) in [0, 1].
    """
    o = options
    if o.fda > 0 and float(torch.rand((), generator=gen)) < o.fda:
        if style is None:
            raise ValueError("augment.fda > 0 needs a target image to take the amplitude from (style=...)")
        img = fda(img, style, o.fda_beta)
    if o.jitter > 0:
        img = T.color_jitter(img, o.jitter, gen, p=o.p_jitter)
    if o.grayscale > 0 and float(torch.rand((), generator=gen)) < o.grayscale:
        img = grayscale(img)
    if o.channel_shuffle > 0 and float(torch.rand((), generator=gen)) < o.channel_shuffle:
        img = channel_shuffle(img, torch.randperm(3, generator=gen))
    if o.blur > 0 and float(torch.rand((), generator=gen)) < o.blur:
        img = T.gaussian_blur(img, float(torch.empty(()).uniform_(0.1, 2.0, generator=gen)))
    return img


def enabled(options) -> bool:
    """Whether any randomisation is on (options: config.AugmentConfig or None)."""
    return options is not None and any(
        getattr(options, k) > 0 for k in ("jitter", "grayscale", "blur", "channel_shuffle", "fda")
    )


def check(options) -> list[str]:
    """Bad values of an AugmentConfig, as 'augment.key=value: expected ...' strings (empty when all are fine)."""
    bad = []
    for key in ("p_jitter", "grayscale", "blur", "channel_shuffle", "fda"):
        v = getattr(options, key)
        if not 0 <= v <= 1:
            bad.append(f"augment.{key}={v}: expected a probability in [0, 1]")
    if not 0 <= options.jitter <= 1:
        bad.append(f"augment.jitter={options.jitter}: expected a strength in [0, 1]")
    if not 0 <= options.fda_beta < 0.5:
        bad.append(f"augment.fda_beta={options.fda_beta}: expected a fraction in [0, 0.5)")
    return bad
