"""fuse_pseudo_labels: blend two class-probability maps, take the arg-max, drop pixels under a class threshold.

P = alpha * probs + (1 - alpha) * instance_probs (P = probs when instance_probs is None);
label = argmax_c P (ties: the smaller c); confidence = max_c P; label = ignore_index where confidence <
thresholds[label]. One pass over the probabilities; not differentiable (pseudo-labels are targets).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_device, check_float, check_shape
from ._dispatch import acc_dtype, resolve_impl
from ._tiles import Launcher, configs, tl, triton

_OP = "fuse_pseudo_labels"

# --- torch reference ---


def fuse_pseudo_labels_reference(
    probs: Tensor, instance_probs: Tensor | None, alpha: float, thresholds: Tensor, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """Plain torch.

    Args:
        probs: (B, C, H, W) float.  instance_probs: (B, C, H, W) float or None.  alpha: blend weight.
        thresholds: (C,) float.  ignore_index: label written under the threshold.
    Returns:
        labels (B, H, W) int64, confidence (B, H, W) float32 (float64 for float64 inputs).
    """
    dt = acc_dtype(probs, thresholds, *([instance_probs] if instance_probs is not None else []))
    fused = probs.to(dt)
    if instance_probs is not None:
        fused = alpha * fused + (1.0 - alpha) * instance_probs.to(dt)  # (B, C, H, W)
    confidence, labels = fused.max(dim=1)  # (B, H, W); the first maximum wins a tie
    labels = torch.where(confidence < thresholds.to(dt)[labels], ignore_index, labels)
    return labels, confidence


# --- CPU path: chunked torch ---


def _fuse_chunked(probs, instance_probs, alpha, thresholds, ignore_index):
    """A few whole-tensor passes per group of images (temporaries <= ~64 MB). torch.max(dim=1) and argmax over a
    middle dim are slow on CPU while amax is vectorised, so the arg-max is read off the maximum: rank the classes
    C..1, keep the rank where P equals its maximum, and the largest rank left is the smallest maximising class.
    """
    dt = acc_dtype(probs, thresholds, *([instance_probs] if instance_probs is not None else []))
    b, c, h, w = probs.shape
    labels = torch.empty(b, h, w, dtype=torch.int64, device=probs.device)  # (B, H, W)
    confidence = torch.empty(b, h, w, dtype=dt, device=probs.device)  # (B, H, W)
    thr = thresholds.to(dt)
    rank_dtype = torch.uint8 if c < 256 else torch.int32
    rank = torch.arange(c, 0, -1, dtype=rank_dtype, device=probs.device).view(1, c, 1, 1)  # (1, C, 1, 1)
    step = max(1, (64 << 20) // max(1, c * h * w * 4))
    for s in range(0, b, step):
        fused = probs[s : s + step].to(dt)  # (b, C, H, W)
        if instance_probs is not None:  # lerp(q, p, alpha) = alpha p + (1 - alpha) q, exact at alpha = 0 and 1
            fused = torch.lerp(instance_probs[s : s + step].to(dt), fused, alpha)
        peak = fused.amax(1, keepdim=True)  # (b, 1, H, W)
        best_rank = (fused == peak).to(rank_dtype).mul_(rank).amax(1)  # (b, H, W)
        label = (c - best_rank.long()).clamp_(max=c - 1)  # clamp: a NaN pixel matches no class
        confidence[s : s + step] = peak.squeeze(1)
        labels[s : s + step] = label.masked_fill_(peak.squeeze(1) < thr[label], ignore_index)
    return labels, confidence


# --- Triton kernel ---


@triton.jit
def _fuse_kernel(
    p_ptr,  # (B, C, H*W) probs
    q_ptr,  # (B, C, H*W) instance probs (unused without HAS_INST)
    thr_ptr,  # (C,) thresholds
    label_ptr,  # (B, H*W) int64
    conf_ptr,  # (B, H*W) float32
    C,
    HW,
    alpha,  # weight of probs
    beta,  # 1 - alpha
    ignore_index,
    HAS_INST: tl.constexpr,
    CLASS_BLOCK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per (image, BLOCK pixels). The classes are read as (CLASS_BLOCK, BLOCK) tiles, contiguous along
    the pixels: every class plane of the tile is in flight at once (a loop over single planes keeps a few loads in
    flight per thread and stays latency-bound). More classes than CLASS_BLOCK: a running max over the tiles."""
    img = tl.program_id(0).to(tl.int64)
    pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    pmask = pix < HW
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    label = tl.zeros((BLOCK,), tl.int32)
    for c0 in range(0, C, CLASS_BLOCK):
        cls = c0 + tl.arange(0, CLASS_BLOCK)  # (CLASS_BLOCK,)
        offs = img * C * HW + cls[:, None].to(tl.int64) * HW + pix[None, :]  # (CLASS_BLOCK, BLOCK)
        mask = (cls[:, None] < C) & pmask[None, :]
        x = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_INST:
            x = alpha * x + beta * tl.load(q_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.where(mask & (x == x), x, float("-inf"))  # padding classes and NaN never win
        tile_best = tl.max(x, axis=0)  # (BLOCK,)
        tile_label = tl.argmax(x, axis=0, tie_break_left=True) + c0  # a tie inside the tile: the smaller class
        better = tile_best > best  # strict: a tie with an earlier tile keeps the smaller class
        best = tl.where(better, tile_best, best)
        label = tl.where(better, tile_label, label)
    thr = tl.load(thr_ptr + label, mask=pmask, other=0.0).to(tl.float32)  # a gather from the C-entry table
    label = tl.where(best < thr, ignore_index, label)
    tl.store(label_ptr + img * HW + pix, label.to(tl.int64), mask=pmask)
    tl.store(conf_ptr + img * HW + pix, best, mask=pmask)


# (CLASS_BLOCK x BLOCK) tiles laid out with the class planes inside each thread: when BLOCK covers 16 bytes per
# thread of all num_warps x 32 threads, every warp lies along the pixels and the max / arg-max over the classes needs
# no shared memory; each thread then has CLASS_BLOCK 16-byte loads of each input in flight. `_in_thread_classes`
# keeps only such configs for the input's element size (benchmarks/kernels_static.py: no spills, 128-bit loads).
# Under the interpreter 8 classes per tile, so the tests' 19 classes take three tiles, the last one partial.
def _in_thread_classes(configs_, named_args, **kwargs):
    size = named_args["p_ptr"].element_size()
    kept = [c for c in configs_ if c.kwargs["BLOCK"] // (32 * c.num_warps) * size >= 16]
    return kept or list(configs_)


_FUSE = Launcher(
    _fuse_kernel,
    configs(
        ({"CLASS_BLOCK": 8, "BLOCK": 512}, 4, 1),  # float32: 4 pixels a thread
        ({"CLASS_BLOCK": 16, "BLOCK": 512}, 4, 1),
        ({"CLASS_BLOCK": 8, "BLOCK": 1024}, 8, 1),
        ({"CLASS_BLOCK": 8, "BLOCK": 1024}, 4, 1),  # both: 8 pixels a thread
        ({"CLASS_BLOCK": 4, "BLOCK": 2048}, 8, 1),
        ({"CLASS_BLOCK": 8, "BLOCK": 2048}, 8, 1),
    ),
    key=["C", "HW", "HAS_INST"],
    interpret=lambda kw: {"CLASS_BLOCK": 8, "BLOCK": 64},
    prune=_in_thread_classes,
)


def _fuse_triton(probs, instance_probs, alpha, thresholds, ignore_index):
    """Launch the fused kernel: probabilities read once, label and confidence written once.

    Returns:
        labels (B, H, W) int64, confidence (B, H, W) float32.
    """
    b, c, h, w = probs.shape
    p = probs.contiguous()  # (B, C, H, W)
    q = instance_probs.contiguous() if instance_probs is not None else p  # (B, C, H, W)
    labels = torch.empty(b, h, w, dtype=torch.int64, device=p.device)  # (B, H, W)
    confidence = torch.empty(b, h, w, dtype=torch.float32, device=p.device)  # (B, H, W)
    if labels.numel():
        grid = lambda meta: (b, triton.cdiv(h * w, meta["BLOCK"]))  # noqa: E731
        _FUSE[grid](
            p,
            q,
            thresholds.contiguous(),
            labels,
            confidence,
            c,
            h * w,
            alpha,
            1.0 - alpha,
            ignore_index,
            HAS_INST=instance_probs is not None,
        )
    return labels, confidence


# --- public op ---


def _check_args(probs, instance_probs, alpha, thresholds, ignore_index) -> float:
    """ValueError naming the argument on misuse; returns alpha as a float."""
    check_float(_OP, "probs", probs, 4)
    if instance_probs is not None:
        check_float(_OP, "instance_probs", instance_probs, 4)
        check_shape(_OP, "instance_probs", instance_probs, tuple(probs.shape))
        check_device(_OP, "instance_probs", instance_probs, probs.device)
    check_float(_OP, "thresholds", thresholds, 1)
    check_shape(_OP, "thresholds", thresholds, (probs.shape[1],))
    check_device(_OP, "thresholds", thresholds, probs.device)
    if isinstance(alpha, Tensor):
        alpha = alpha.item()
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= alpha <= 1.0):
        raise ValueError(f"{_OP}: alpha must be a number in [0, 1], got {alpha!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"{_OP}: ignore_index must be an int, got {ignore_index!r}")
    if probs.shape[1] == 0:
        raise ValueError(f"{_OP}: probs must have at least one class, got shape {tuple(probs.shape)}")
    return float(alpha)


def fuse_pseudo_labels(
    probs: Tensor,
    instance_probs: Tensor | None,
    alpha: float,
    thresholds: Tensor,
    ignore_index: int = 255,
    impl: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Fused pseudo-labels and their confidence.

    Args:
        probs: (B, C, H, W) float class probabilities (e.g. the teacher's softmax).
        instance_probs: (B, C, H, W) float, or None to use probs alone.
        alpha: weight of probs in the blend, in [0, 1].
        thresholds: (C,) float per-class confidence thresholds.
        ignore_index: label given to pixels under their class threshold.
        impl: "auto", "triton", "torch" (reference) or "chunked".
    Returns:
        labels (B, H, W) int64, confidence (B, H, W) float32 = max_c P (also where the label is ignored).
    """
    alpha = _check_args(probs, instance_probs, alpha, thresholds, ignore_index)
    impl = resolve_impl(impl, probs.device, _OP)
    with torch.no_grad():
        if impl == "torch":
            return fuse_pseudo_labels_reference(probs, instance_probs, alpha, thresholds, ignore_index)
        if impl == "triton":
            return _fuse_triton(probs, instance_probs, alpha, thresholds, ignore_index)
        return _fuse_chunked(probs, instance_probs, alpha, thresholds, ignore_index)
