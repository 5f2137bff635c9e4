"""Augmentations as small pure functions on tensors.

Images are float tensors in [0, 1], `(3, H, W)` or `(B, 3, H, W)`; labels are integer `(H, W)` or `(B, H, W)`.
Every random function takes an explicit CPU `torch.Generator`; random numbers are drawn on the CPU and moved to
the data's device, so results depend only on the generator state, whatever the device.

Borrowed: random scale + crop (mmsegmentation RandomCrop; the rare-class re-crop is `engine.data.TrainView`'s),
strong view = colour jitter + Gaussian blur (DACS `strong_transform`, DAFormer defaults: jitter strength 0.2 with
probability 0.2, blur with probability 0.5, sigma in [0.15, 1.15]), ClassMix masks (DACS: half of the classes
present, rounded up).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from udaseg.data.labels import IGNORE_INDEX

Size = tuple[int, int]


def _pair(size: int | Size) -> Size:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    """(n,) float32 uniform samples on the CPU."""
    return torch.rand(n, generator=gen) * (high - low) + low


def resize(img: torch.Tensor, size: int | Size, antialias: bool = True) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of (3, H, W) or (B, 3, H, W) to `size` = (h, w)."""
    h, w = _pair(size)
    if tuple(img.shape[-2:]) == (h, w):
        return img
    batched = img.dim() == 4
    x = img if batched else img.unsqueeze(0)
    down = h < x.shape[-2] or w < x.shape[-1]
    out = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=antialias and down)
    return out if batched else out.squeeze(0)


def resize_label(lbl: torch.Tensor, size: int | Size) -> torch.Tensor:
    """Nearest-neighbour resize of (H, W) or (B, H, W) integer labels (pixel-centre sampling, any dtype)."""
    h, w = _pair(size)
    in_h, in_w = lbl.shape[-2:]
    if (in_h, in_w) == (h, w):
        return lbl
    rows = ((torch.arange(h, device=lbl.device) + 0.5) * (in_h / h)).long().clamp_(max=in_h - 1)
    cols = ((torch.arange(w, device=lbl.device) + 0.5) * (in_w / w)).long().clamp_(max=in_w - 1)
    return lbl[..., rows, :][..., cols]


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of an image or label (last dimension)."""
    return x.flip(-1)


def pad_to(img: torch.Tensor, lbl: torch.Tensor, size: Size) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (3, H, W) image with 0 and (H, W) label with IGNORE_INDEX at the bottom/right up to at least `size`."""
    ph, pw = max(size[0] - img.shape[-2], 0), max(size[1] - img.shape[-1], 0)
    if ph == 0 and pw == 0:
        return img, lbl
    return F.pad(img, (0, pw, 0, ph), value=0.0), F.pad(lbl, (0, pw, 0, ph), value=IGNORE_INDEX)


def random_scale_crop(
    img: torch.Tensor,
    lbl: torch.Tensor,
    crop: int | Size,
    scale_range: tuple[float, float] | None,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale by a random factor, pad if needed, then take a random crop.

    Args:
        img: (3, H, W) float image. lbl: (H, W) integer label.
        crop: output (h, w). scale_range: (low, high) factor applied to both sides; None keeps the size.
        gen: CPU generator.
    Returns:
        ((3, h, w) image, (h, w) label).
    """
    ch, cw = _pair(crop)
    if scale_range is not None:
        s = float(_uniform(gen, 1, *scale_range))
        size = (max(1, round(img.shape[-2] * s)), max(1, round(img.shape[-1] * s)))
        img, lbl = resize(img, size), resize_label(lbl, size)
    img, lbl = pad_to(img, lbl, (ch, cw))
    h, w = lbl.shape[-2:]
    y0 = int(torch.randint(h - ch + 1, (1,), generator=gen))
    x0 = int(torch.randint(w - cw + 1, (1,), generator=gen))
    return img[:, y0 : y0 + ch, x0 : x0 + cw], lbl[y0 : y0 + ch, x0 : x0 + cw]


def _as_batch(img: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (img, True) if img.dim() == 4 else (img.unsqueeze(0), False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma (ITU-R 601)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `angle` (B,) radians in YIQ space (a 3x3 matrix per image, no HSV round trip)."""
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(len(angle), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    mat = from_yiq @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", mat, x)


def color_jitter(img: torch.Tensor, strength: float, gen: torch.Generator, p: float = 1.0) -> torch.Tensor:
    """Random brightness, contrast, saturation (factors in [1-s, 1+s]) and hue (shift in [-s, s] turns, s capped at
    0.5: the kornia/torchvision convention DACS uses), each image with its own factors, applied with probability
    `p` per image.

    Args: img (3, H, W) or (B, 3, H, W) in [0, 1]. Returns the same shape, clamped to [0, 1].
    """
    x, batched = _as_batch(img)
    b = x.shape[0]
    dev = x.device
    apply = (torch.rand(b, generator=gen) < p).to(dev).view(b, 1, 1, 1)
    bright, contrast, sat = (_uniform(gen, b, 1 - strength, 1 + strength).to(dev).view(b, 1, 1, 1) for _ in range(3))
    hs = min(strength, 0.5)
    hue = _uniform(gen, b, -hs, hs).to(dev) * (2 * math.pi)
    y = (x * bright).clamp(0, 1)
    mean = _gray(y).mean(dim=(2, 3), keepdim=True)
    y = ((y - mean) * contrast + mean).clamp(0, 1)
    g = _gray(y)
    y = ((y - g) * sat + g).clamp(0, 1)
    y = _hue_rotate(y, hue.to(y.dtype)).clamp(0, 1)
    out = torch.where(apply, y, x)
    return out if batched else out.squeeze(0)


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(img: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding) of (3, H, W) or (B, 3, H, W).

    `sigma` is a float for all images or a (B,) tensor, one per image; sigma <= 0 leaves an image unchanged.
    """
    x, batched = _as_batch(img)
    sig = torch.as_tensor(sigma, dtype=torch.float32).flatten().cpu()
    if sig.numel() == 1:
        sig = sig.expand(x.shape[0])
    outs = []
    for i in range(x.shape[0]):  # per-image kernels; B is small
        s = float(sig[i])
        xi = x[i : i + 1]
        if s > 0:
            k = _gaussian_kernel(s, x.device, x.dtype)
            r = (len(k) - 1) // 2
            c = xi.shape[1]
            pad_h, pad_w = min(r, xi.shape[-2] - 1), min(r, xi.shape[-1] - 1)
            kh = k[r - pad_h : r + pad_h + 1]
            kw = k[r - pad_w : r + pad_w + 1]
            xi = F.pad(xi, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else xi
            xi = F.conv2d(xi, (kw / kw.sum()).view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
            xi = F.pad(xi, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else xi
            xi = F.conv2d(xi, (kh / kh.sum()).view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        outs.append(xi)
    out = torch.cat(outs)
    return out if batched else out.squeeze(0)


def strong_view(
    img: torch.Tensor,
    gen: torch.Generator,
    jitter: float = 0.2,
    p_jitter: float = 0.2,
    p_blur: float = 0.5,
    sigma_range: tuple[float, float] = (0.15, 1.15),
) -> torch.Tensor:
    """DACS/DAFormer strong view: colour jitter then Gaussian blur, per image. (B, 3, H, W) -> same shape.

    The weak view is the crop itself (flip already applied by the dataset), so weak and strong views of the
    same crop are `img` and `strong_view(img, gen)`.
    """
    x, batched = _as_batch(img)
    b = x.shape[0]
    x = color_jitter(x, jitter, gen, p=p_jitter)
    blur = torch.rand(b, generator=gen) < p_blur
    sigma = torch.where(blur, _uniform(gen, b, *sigma_range), torch.zeros(b))
    x = gaussian_blur(x, sigma)
    return x if batched else x.squeeze(0)


def class_mix_masks(labels: torch.Tensor, gen: torch.Generator, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """ClassMix masks: for each image, half of its present classes (rounded up) drawn at random.

    Args:
        labels: (B, H, W) integer labels of the images whose pixels are pasted (the source batch).
    Returns:
        (B, H, W) bool, True where the pixel belongs to a chosen class.
    """
    masks = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    for i in range(labels.shape[0]):
        classes = torch.unique(labels[i])
        classes = classes[classes != ignore_index]
        n = len(classes)
        if n == 0:
            continue
        order = torch.randperm(n, generator=gen)[: (n + 1) // 2].to(labels.device)
        masks[i] = torch.isin(labels[i], classes[order])
    return masks


def mix(masks: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a` where the mask is True, `b` elsewhere. masks (B, H, W); a, b (B, C, H, W) images or (B, H, W) labels."""
    m = masks.unsqueeze(1) if a.dim() == masks.dim() + 1 else masks
    return torch.where(m, a, b)
