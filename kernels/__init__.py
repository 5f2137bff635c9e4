"""Fused kernels of the adaptation methods (installed as udaseg.kernels); the contract is docs/kernels.md.

Each op takes ``impl="auto" | "triton" | "torch"`` (see ``_dispatch``): Triton on CUDA tensors, the chunked torch
path on CPU, or the plain torch reference. ``use_impl(name)`` sets what "auto" means inside a ``with`` block.
One file per op, named after it; adding an op is one op file, one test file, one benchmark function and one line
here (docs/kernels.md).

    from udaseg.kernels import bank_topk, use_impl
    scores, index = bank_topk(query, bank, k=16)         # (N, 16), (N, 16)
    with use_impl("torch"):
        scores_ref, index_ref = bank_topk(query, bank, k=16)
"""

from ._dispatch import use_impl
from .bank_class_logsumexp import bank_class_logsumexp
from .bank_topk import bank_topk
from .class_feature_sums import class_feature_sums
from .fuse_pseudo_labels import fuse_pseudo_labels
from .instance_consistency_loss import instance_consistency_loss
from .sinkhorn import sinkhorn

__all__ = [
    "bank_class_logsumexp",
    "bank_topk",
    "class_feature_sums",
    "fuse_pseudo_labels",
    "instance_consistency_loss",
    "sinkhorn",
    "use_impl",
]
