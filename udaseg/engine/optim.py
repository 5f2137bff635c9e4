"""Optimizer, learning-rate schedule and the EMA teacher."""

from __future__ import annotations

import math

import torch
from torch import nn

from udaseg.config import OptimConfig


def param_groups(model: nn.Module, extra: dict[str, nn.Module], cfg: OptimConfig) -> list[dict]:
    """Backbone at lr, decoder heads and the plug-ins' heads at lr * head_lr_mult (DAFormer)."""
    head_lr = cfg.lr * cfg.head_lr_mult
    if hasattr(model, "param_groups"):
        groups = model.param_groups(cfg.lr, cfg.head_lr_mult)
    else:
        groups = [{"params": list(model.parameters()), "lr": cfg.lr}]
    for name, module in sorted(extra.items()):
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": head_lr, "name": f"method.{name}"})
    for g in groups:
        g["initial_lr"] = g["lr"]
    return groups


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.optimizer: {cfg.optimizer!r} is not one of adamw, sgd")


def lr_factor(iteration: int, total: int, warmup: int, power: float) -> float:
    """Linear warm-up over `warmup` iterations, then poly decay (1 - t/total)^power."""
    if warmup > 0 and iteration < warmup:
        return (iteration + 1) / warmup
    return max(0.0, 1.0 - iteration / max(total, 1)) ** power


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float, steps: int) -> None:
    """teacher <- m * teacher + (1 - m) * student, with m ramped up as min(1 - 1/(steps+1), momentum) (DACS).

    Runs over the state dict: parameters and persistent floating buffers (BatchNorm statistics) are averaged,
    integer buffers copied. Non-persistent buffers (constants such as the normalisation mean/std) are left alone:
    averaging a constant with itself drifts by rounding, and a resumed run, which rebuilds them, would differ.
    """
    m = min(1.0 - 1.0 / (steps + 1), momentum)
    source = student.state_dict()
    for name, t in teacher.state_dict().items():
        s = source[name].detach()
        if t.dtype.is_floating_point:
            t.mul_(m).add_(s, alpha=1.0 - m)
        else:
            t.copy_(s)


def grad_norm_clip(params: list[nn.Parameter], max_norm: float) -> float:
    if max_norm <= 0:
        return math.nan
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
