"""Pictures of a run: loss and mIoU curves, and target samples before and after adaptation."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from udaseg.data.labels import colorize  # noqa: E402
from udaseg.evaluate import predict  # noqa: E402

SKIP = {"iter", "stage", "lr", "grad_norm", "it_per_s", "img_per_s", "miou"}


def read_jsonl(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def curves(metrics: Path, out: Path) -> None:
    """Loss terms (left) and periodic target mIoU (right) over iterations."""
    rows = read_jsonl(metrics)
    train_rows = [r for r in rows if r.get("stage") != "eval"]
    evals = [r for r in rows if r.get("stage") == "eval"]
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(12, 4))
    keys = sorted({k for r in train_rows for k in r if k not in SKIP and isinstance(r[k], (int, float))})
    for k in keys:
        pts = [(r["iter"], r[k]) for r in train_rows if k in r]
        ax_loss.plot(*zip(*pts), label=k, lw=1.2 if k == "total" else 0.8)
    ax_loss.set(xlabel="iteration", ylabel="loss", title="loss terms", yscale="log" if keys else "linear")
    if keys:
        ax_loss.legend(fontsize=7)
    if evals:
        ax_miou.plot([r["iter"] for r in evals], [r["miou"] for r in evals], "o-")
    ax_miou.set(xlabel="iteration", ylabel="mIoU (%)", title="target mIoU (teacher)")
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


@torch.no_grad()
def sample_predictions(model, dataset, count: int, device) -> dict:
    """Class maps of the first `count` images of `dataset` (uint8 tensors: small, checkpoint-safe)."""
    model.eval()
    preds = []
    for i in range(min(count, len(dataset))):
        image = dataset[i]["image"][None].to(device)  # (1, 3, H, W)
        preds.append(predict(model, image).argmax(1)[0].to(torch.uint8).cpu())  # the evaluation's own inference
    return {"indices": list(range(len(preds))), "preds": preds}


def samples(dataset, before: dict | None, after: dict, out: Path) -> None:
    """Rows of target image | ground truth | before adaptation | after adaptation."""
    n = len(after["preds"])
    if n == 0:
        return
    cols = ["target image", "ground truth", "before adaptation", "after adaptation"]
    fig, axes = plt.subplots(n, 4, figsize=(12, 1.65 * n + 0.3), squeeze=False)  # 2:1 street crops
    for row, index in enumerate(after["indices"]):
        item = dataset[index]
        panels = [item["image"].permute(1, 2, 0).numpy(), colorize(item["label"].numpy())]
        panels.append(colorize(before["preds"][row].numpy()) if before else np.zeros_like(panels[1]))
        panels.append(colorize(after["preds"][row].numpy()))
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(np.clip(panel, 0, 1) if panel.dtype.kind == "f" else panel)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(cols[col], fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
