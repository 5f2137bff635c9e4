"""Pieces shared by the Triton kernels: the launcher (autotune on a GPU, a fixed config under the interpreter, a
recorder for the static check), the class-grouped bank layout and the bank split (flash-decoding style).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._dispatch import HAS_TRITON, INTERPRET, recording_flag, tl, triton

if not HAS_TRITON:  # pragma: no cover - lets the @triton.jit below decorate on machines without triton

    class _Stub:
        @staticmethod
        def jit(fn):
            return fn

        constexpr_function = jit

    triton = _Stub()  # noqa: F811

# The Triton bank kernels keep a (BLOCK_N, D) query tile in registers and accumulate (BLOCK_N, D) gradients there:
# wider embeddings take the chunked torch path (matmuls; on a GPU too). The contract's D is 256.
MAX_D = 256
SPLIT_ROWS = 64  # the row block the split count is sized for (smaller kept blocks: more programs still)


@dataclass
class Launch:
    """One kernel launch seen by ``record_launches``: the launcher, its arguments, its call-site constexprs."""

    launcher: Launcher
    args: tuple
    kwargs: dict = field(default_factory=dict)

    def configs(self) -> list:
        """The autotune configs kept for this call (after pruning), or the call's own fixed config."""
        return self.launcher.kept_configs(self.args, self.kwargs)


_recorder: contextvars.ContextVar[list[Launch] | None] = contextvars.ContextVar("udaseg_kernel_recorder", default=None)


@contextlib.contextmanager
def record_launches() -> Iterator[list[Launch]]:
    """Inside the block, every Triton launch is recorded instead of run (also on CPU, without the interpreter):
    the static check compiles exactly what the ops would launch, with their real argument types."""
    launches: list[Launch] = []
    token, flag = _recorder.set(launches), recording_flag.set(True)
    try:
        yield launches
    finally:
        _recorder.reset(token)
        recording_flag.reset(flag)


class Launcher:
    """A @triton.jit kernel, autotuned over ``configs`` on a GPU and run with one fixed config when interpreting.

    ``kernel_launcher[grid](*args, **constexprs)``: the grid is a callable of the meta-parameters in both modes.
    ``interpret`` maps the call's keyword arguments to the fixed meta-parameters (autotune needs a GPU driver).
    ``configs=None``: no autotuning, the caller passes every meta-parameter (and num_warps) itself.
    ``tensor_cores``: the kernel's dots are bank GEMMs, which the static check requires on tensor cores for half
    inputs.
    """

    def __init__(
        self,
        kernel,
        configs: list | None,
        key: list[str] = (),
        interpret: Callable[[dict], dict] = None,
        prune=None,
        tensor_cores: bool = False,
    ):
        self.fn = kernel
        self.configs = configs
        self.prune = prune
        self.fixed = interpret or (lambda kw: {})
        self.tensor_cores = tensor_cores
        self.kernel = kernel
        if HAS_TRITON and not INTERPRET and configs:
            prune_by = {"early_config_prune": prune} if prune is not None else None
            self.kernel = triton.autotune(configs=configs, key=list(key), prune_configs_by=prune_by)(kernel)

    def kept_configs(self, args: tuple, kwargs: dict) -> list:
        """What autotuning would choose among for this call: the pruned configs (GPU mode only)."""
        if not self.configs:
            meta = dict(kwargs)
            warps, stages = meta.pop("num_warps", 4), meta.pop("num_stages", 3)
            return [triton.Config({}, num_warps=warps, num_stages=stages)]
        if self.prune is None:
            return list(self.configs)
        named = dict(zip(self.fn.arg_names, args))
        return list(self.prune(self.configs, named, **kwargs))

    def __getitem__(self, grid):
        recorder = _recorder.get()
        if recorder is not None:
            return lambda *args, **kwargs: recorder.append(Launch(self, args, kwargs))
        if not INTERPRET:
            return self.kernel[grid]

        def run(*args, **kwargs):
            return self.kernel[grid](*args, **kwargs, **self.fixed(kwargs))

        return run


def configs(*rows: tuple) -> list:
    """GPU autotune configs from (meta-parameter dict, num_warps, num_stages) rows."""
    if not HAS_TRITON or INTERPRET:
        return []
    return [triton.Config(meta, num_warps=w, num_stages=s) for meta, w, s in rows]


def by_precision(half: list, fp32: list):
    """An early_config_prune that keeps ``half`` configs for tensor-core dots and ``fp32`` ones for "ieee" dots
    (exact float32 products run on the FMA units, with a larger register footprint: smaller tiles)."""
    half_keys = {str(c) for c in half}

    def prune(configs_, named_args, **kwargs):
        want_half = {**named_args, **kwargs}["PREC"] != "ieee"
        kept = [c for c in configs_ if (str(c) in half_keys) == want_half]
        return kept or list(configs_)

    return prune


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs: exact fp32 products ("ieee"; TF32 would change rankings); half inputs use tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


def common_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the kernels read: the inputs' own when they agree (fp16/bf16/fp32), float32 otherwise."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) == 1 and dtypes <= {torch.float16, torch.bfloat16, torch.float32}:
        return dtypes.pop()
    return torch.float32


H100_SMS = 132  # also the H200's; what the static check (recording on CPU) sizes grids for


def _sm_count(device: torch.device) -> int:
    if recording_flag.get():
        return H100_SMS
    return _device_sms(device.index)


@functools.lru_cache(maxsize=8)
def _device_sms(device_index: int | None) -> int:
    if INTERPRET or not torch.cuda.is_available():
        return 1
    return torch.cuda.get_device_properties(device_index or 0).multi_processor_count


def num_programs(device: torch.device) -> int:
    """Persistent-grid size: 4 programs per SM on a GPU, a handful under the interpreter or when recording."""
    if device.type != "cuda" and not recording_flag.get():
        return 3
    return 4 * _sm_count(device)


def bank_splits(n_rows: int, n_tiles: int, device: torch.device) -> int:
    """How many programs share one row block's bank (flash-decoding style): enough that row blocks x splits fill
    the GPU twice over, never more than the bank has tiles. Under the interpreter, small row counts get 2 or 3
    splits (some with no tile of a class), so the tests run the combine step; other CPU cases get 1."""
    blocks = max(1, -(-n_rows // SPLIT_ROWS))
    if device.type != "cuda" and not recording_flag.get():
        return (3 if n_rows <= 20 else 2 if n_rows <= 64 else 1) if INTERPRET else 1
    sms = _sm_count(device)
    return max(1, min(n_tiles, -(-2 * sms // blocks), 16))


def group_bank(bank: Tensor, bank_labels: Tensor, num_classes: int, dtype: torch.dtype):
    """Sort the bank rows by class (stable), empty slots last; no host sync.

    Returns:
        rows (M, D) contiguous in ``dtype`` (class c occupies rows offsets[c]:offsets[c + 1]),
        offsets (C + 1,) int32 on the bank's device.
    """
    labels = bank_labels.long()
    labels = torch.where((labels >= 0) & (labels < num_classes), labels, num_classes)  # (M,) empty -> C
    labels, order = torch.sort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes + 1)[:num_classes]  # (C,)
    offsets = torch.zeros(num_classes + 1, dtype=torch.int32, device=bank.device)  # (C + 1,)
    offsets[1:] = torch.cumsum(counts, 0)
    return bank.detach()[order].to(dtype).contiguous(), offsets


def combine_lse2(m: Tensor, l: Tensor) -> tuple[Tensor, Tensor]:  # noqa: E741
    """Merge per-split online log-sum-exp states (log2 units) over dim 0: (S, ...) -> (...) max and sum."""
    top = m.amax(0)  # (...)
    safe = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    return top, (l * torch.exp2(m - safe)).sum(0)


def d_blocks(dtype: torch.dtype, d: int) -> dict:
    """Constexprs over D for the bank kernels: BLOCK_D (D padded), BLOCK_K (the D chunk of one score dot) and
    BLOCK_DO (the gradient columns one backward program owns).

    Half inputs: one dot over all of D from a query tile held in registers (tensor cores), and a backward that
    owns all D columns (each score tile computed once). float32 inputs use exact "ieee" products on the FMA units,
    which hold a dot's operands in registers: there D goes in chunks of 32 and the backward owns 64 columns
    (recomputing the scores once per 64 columns), or the kernels would spill (benchmarks/kernels_static.py).
    """
    block_d = max(16, 1 << (max(d, 1) - 1).bit_length())
    if dtype == torch.float32:
        return {"BLOCK_D": block_d, "BLOCK_K": min(32, block_d), "BLOCK_DO": min(64, block_d)}
    return {"BLOCK_D": block_d, "BLOCK_K": block_d, "BLOCK_DO": block_d}


@triton.jit
def load_rows(ptr, rows, row_mask, d, D, UPCAST: tl.constexpr):
    """(BLOCK_R, len(d)) = ptr[rows, d] (zero padded); float32 under the interpreter (no bf16 arithmetic)."""
    x = tl.load(ptr + rows.to(tl.int64)[:, None] * D + d[None, :], mask=row_mask[:, None] & (d[None, :] < D), other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def load_cols(ptr, cols, col_mask, d, D, UPCAST: tl.constexpr):
    """(len(d), BLOCK_C) = ptr[cols, d].T: a bank tile laid out as the right operand of a score dot."""
    x = tl.load(ptr + cols.to(tl.int64)[None, :] * D + d[:, None], mask=col_mask[None, :] & (d[:, None] < D), other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def chunked_scores(
    a_ptr,
    rows,
    row_mask,
    b_ptr,
    cols,
    col_mask,
    D,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """(BLOCK_N, BLOCK_M) float32 = a[rows] @ b[cols].T in D chunks of BLOCK_K (the float32 path)."""
    acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    for k0 in range(0, D, BLOCK_K):
        d = k0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        a = load_rows(a_ptr, rows, row_mask, d, D, UPCAST)  # (BLOCK_N, BLOCK_K)
        acc = tl.dot(a, load_cols(b_ptr, cols, col_mask, d, D, UPCAST), acc, input_precision=PREC)
    return acc


@triton.jit
def class_tiles(off_ptr, c, split, SPLITS, BLOCK_M: tl.constexpr):
    """Bank rows of class c and this split's first tile: (first row of the split's first tile, class end, stride).

    Split ``split`` takes the class's tiles split, split + SPLITS, ...: every split sees a share of every class.
    """
    start = tl.load(off_ptr + c)
    end = tl.load(off_ptr + c + 1)
    return start + split * BLOCK_M, end, SPLITS * BLOCK_M
