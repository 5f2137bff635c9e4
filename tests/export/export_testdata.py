"""Sizes and the tiny trained checkpoint of the export tests (a module of its own: test files import from it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SIZE = (64, 128)  # (H, W) of images and graphs in these tests
COUNTS = {"val": 6, "train": 8}  # synthetic target images for scoring / calibration
TRAIN_STEPS = 60


def train_compact(root: str, path: Path) -> Path:
    """A compact model trained TRAIN_STEPS steps on 16 synthetic source images (supervised, cross-entropy)."""
    import torch.nn.functional as F

    from udaseg.checkpoint import save_checkpoint
    from udaseg.data import build_dataset
    from udaseg.models import build_model, upsample

    torch.manual_seed(0)
    src = build_dataset(f"synthetic:{root}", split="train", role="source", count=16, size=SIZE, workers=1)
    pairs = [src.load(i) for i in range(len(src))]
    x = torch.from_numpy(np.stack([im for im, _ in pairs])).permute(0, 3, 1, 2).float() / 255  # (16, 3, H, W)
    y = torch.from_numpy(np.stack([lb for _, lb in pairs]).astype(np.int64))  # (16, H, W)
    model = build_model("compact", num_classes=19)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(TRAIN_STEPS):
        idx = torch.randint(0, len(x), (4,), generator=gen)
        loss = F.cross_entropy(upsample(model(x[idx])["logits"], SIZE), y[idx], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    spec = {"name": "compact", "num_classes": 19, "kwargs": {}}
    save_checkpoint(path, {"model": model.state_dict(), "model_spec": spec, "iteration": TRAIN_STEPS})
    return path
