"""Distributed data parallel through torchrun: process group, gradient averaging, state sync helpers.

Gradients are averaged by hand after backward instead of wrapping the student in DistributedDataParallel:
plug-ins run extra student forward passes per step and own trainable heads outside the model, which DDP's
one-forward-one-backward bookkeeping does not allow. Buffers (BatchNorm statistics) are broadcast from rank 0
after each step, as DDP's broadcast_buffers does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


def init(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun; returns (rank, world_size). gloo on CPU, NCCL on CUDA."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Keys of this attempt only: after torchrun --max-restarts the rendezvous store may still hold the failed
        # attempt's addresses, and a worker connecting to a dead peer's address times out.
        store, rank, world = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend=backend, store=dist.PrefixStore(f"udaseg/attempt_{attempt}", store), rank=rank, world_size=world
        )
    return dist.get_rank(), dist.get_world_size()


def local_device(device: torch.device) -> torch.device:
    """This process's GPU under torchrun (cuda:LOCAL_RANK, made current); other devices as they are."""
    if device.type != "cuda" or device.index is not None or "LOCAL_RANK" not in os.environ:
        return device
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    return device


def restarted() -> bool:
    """Whether torchrun restarted this worker group after a failure (`--max-restarts`): the run continues."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    if world_size() > 1:
        dist.destroy_process_group()


def any_flags(*flags: bool) -> list[bool]:
    """For each flag, whether it is set on any rank: one small all-reduce (MAX), so every rank decides alike."""
    if world_size() == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def on_main(fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 only; if it raises, every rank raises (rank 0 its own error, the others a pointer to it),
    so no rank is left waiting in a collective. Returns fn's result on rank 0, None elsewhere."""
    from udaseg.fileio import UserError

    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 (re-raised below, after the other ranks know)
            error = e
    (failed,) = any_flags(error is not None)
    if error is not None:
        raise error
    if failed:
        raise UserError("rank 0 stopped the run before training (its message above says why)")
    return result


def average_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce the mean of every gradient, in one flat buffer (a single collective per step)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(module: nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters and/or buffers to every rank."""
    if world_size() == 1:
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    for t in tensors:
        dist.broadcast(t.data, src=0)


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of a tensor over ranks (returns a new tensor; the input is untouched)."""
    if world_size() == 1:
        return t.clone()
    out = t.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


def all_reduce_sum(t: Tensor) -> Tensor:
    if world_size() == 1:
        return t.clone()
    out = t.detach().clone()
    dist.all_reduce(out)
    return out


def all_gather_cat(t: Tensor, dim: int = 0) -> Tensor:
    """Concatenate equally shaped tensors from all ranks along `dim`, in rank order."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim)


def broadcast_tensor(t: Tensor, src: int = 0) -> Tensor:
    if world_size() > 1:
        dist.broadcast(t, src=src)
    return t
