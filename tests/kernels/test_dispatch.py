"""The impl switch: use_impl, auto on CPU, explicit arguments, errors."""

from __future__ import annotations

import importlib

import pytest
import torch

from udaseg.kernels import _dispatch, sinkhorn, use_impl

CPU = torch.device("cpu")


def test_auto_is_the_chunked_path_on_cpu_and_triton_on_cuda(monkeypatch):
    assert _dispatch.resolve_impl("auto", CPU, "op") == "chunked"
    monkeypatch.setattr(_dispatch, "HAS_TRITON", True)
    assert _dispatch.resolve_impl("auto", torch.device("cuda", 0), "op") == "triton"


def test_use_impl_sets_auto_and_restores_it():
    with use_impl("torch"):
        assert _dispatch.resolve_impl("auto", CPU, "op") == "torch"
        with use_impl("chunked"):
            assert _dispatch.resolve_impl("auto", CPU, "op") == "chunked"
        assert _dispatch.resolve_impl("auto", CPU, "op") == "torch"
        assert _dispatch.resolve_impl("chunked", CPU, "op") == "chunked", "an explicit impl wins"
    assert _dispatch.resolve_impl("auto", CPU, "op") == "chunked"


def test_use_impl_reaches_the_ops(monkeypatch):
    called = []
    module = importlib.import_module("udaseg.kernels.sinkhorn")  # the package attribute is the function
    monkeypatch.setattr(module, "sinkhorn_reference", lambda *a: called.append(a) or a[0])
    scores = torch.randn(4, 3)
    with use_impl("torch"):
        sinkhorn(scores, torch.full((3,), 1 / 3), 0.05, 1)
    assert len(called) == 1


def test_bad_names_raise():
    with pytest.raises(ValueError, match="use_impl"), use_impl("fast"):
        pass
    with pytest.raises(ValueError, match="impl"):
        sinkhorn(torch.randn(4, 3), torch.full((3,), 1 / 3), 0.05, 1, impl="gpu")


def test_triton_without_cuda_or_interpreter_raises(monkeypatch):
    monkeypatch.setattr(_dispatch, "INTERPRET", False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        _dispatch.resolve_impl("triton", CPU, "op")
