"""The loop hands plug-ins the autocast dtype for the kernels' inputs on CUDA with train.amp, float32 elsewhere."""

import torch

from udaseg.config import load_config
from udaseg.train import amp_dtype


def test_compute_dtype_is_the_autocast_dtype_on_cuda_and_float32_on_cpu(monkeypatch):
    cfg = load_config(None, ["train.amp=true"])
    assert amp_dtype(cfg, torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype(cfg, torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype(cfg, torch.device("cuda")) == torch.float16
    assert amp_dtype(load_config(None, ["train.amp=false"]), torch.device("cuda")) == torch.float32
