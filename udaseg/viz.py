"""Pictures of a run: loss and mIoU curves, target samples before and after adaptation, pseudo-label curves."""

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
    train_rows = [r for r in rows if r.get("stage") in ("warmup", "adapt")]  # not eval/pseudo/select/warning
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


PSEUDO_PANELS = [  # (per-class key in the "pseudo" rows, title)
    ("share", "pseudo-label class share (dashed: source labels)"),
    ("coverage", "coverage: share of the teacher's class kept"),
    ("confidence", "mean confidence of kept pseudo-labels"),
    ("change", "change rate on the probe set"),
    ("precision", "precision (target labels, monitoring only)"),
    ("recall", "recall (target labels, monitoring only)"),
]


def pseudo_labels(metrics: Path, out: Path, top: int = 10) -> None:
    """Per-class curves of the pseudo-label diagnostics, and the label-free score beside the labelled mIoU.

    Classes shown: the `top` most frequent in the pseudo-labels over the run (one colour per class across panels).
    """
    rows = read_jsonl(metrics)
    pseudo = [r for r in rows if r.get("stage") == "pseudo"]
    select = [r for r in rows if r.get("stage") == "select"]
    panels = [(k, t) for k, t in PSEUDO_PANELS if any(k in r.get("per_class", {}) for r in pseudo)]
    fig, axes = plt.subplots(2, 4, figsize=(20, 8), squeeze=False)
    axes = axes.reshape(-1)
    classes = _frequent_classes(pseudo, top)
    colours = {c: plt.cm.tab20(i % 20) for i, c in enumerate(classes)}
    for ax, (key, title) in zip(axes, panels):
        for c in classes:
            pts = [(r["iter"], r["per_class"][key].get(c)) for r in pseudo if key in r.get("per_class", {})]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts), color=colours[c], lw=1, label=c)
            if key == "share":
                src = [(r["iter"], r["per_class"]["source_share"].get(c)) for r in pseudo]
                src = [(x, y) for x, y in src if y is not None]
                if src:
                    ax.plot(*zip(*src), color=colours[c], lw=0.8, ls="--")
        ax.set(title=title, xlabel="iteration")
    if panels and axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=6, ncol=2)
    _overall(axes[len(panels)], pseudo)
    _selection(axes[len(panels) + 1], select)
    for ax in axes[len(panels) + 2 :]:
        ax.set_axis_off()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _frequent_classes(pseudo: list[dict], top: int) -> list[str]:
    totals: dict[str, float] = {}
    for r in pseudo:
        for c, v in r.get("per_class", {}).get("share", {}).items():
            totals[c] = totals.get(c, 0.0) + (v or 0.0)
    return sorted(totals, key=lambda c: -totals[c])[:top]


def _overall(ax, pseudo: list[dict]) -> None:
    """Coverage and effective number of classes (pseudo-labels against source labels) over iterations."""
    it = [r["iter"] for r in pseudo]
    if not it:
        return
    for key, style, who in (("effective_classes", "C0-", "pseudo"), ("source_effective_classes", "C0--", "source")):
        ax.plot(it, [r.get(key) or np.nan for r in pseudo], style, label=f"effective classes ({who})")
    ax.set(title="diversity and coverage", xlabel="iteration", ylabel="classes")
    twin = ax.twinx()
    twin.plot(it, [r.get("coverage") for r in pseudo], "C1-", label="coverage")
    twin.set(ylabel="coverage", ylim=(0, 1.05))
    ax.legend(fontsize=7, loc="lower left")
    twin.legend(fontsize=7, loc="lower right")


def _selection(ax, select: list[dict]) -> None:
    """The label-free score (left axis) and, where the val set has labels, the target mIoU (right axis)."""
    if not select:
        return
    key = select[-1].get("criterion", "agreement")
    it = [r["iter"] for r in select]
    ax.plot(it, [r[key] for r in select], "C2o-", label=f"label-free score ({key})")
    best = max(select, key=lambda r: r[key])
    ax.axvline(best["iter"], color="C2", ls=":", lw=1)
    ax.set(title="checkpoint selection without labels", xlabel="iteration", ylabel=key)
    if any(r.get("miou") is not None for r in select):
        twin = ax.twinx()
        twin.plot(it, [np.nan if r.get("miou") is None else r["miou"] for r in select], "C3s-", label="target mIoU")
        twin.set(ylabel="mIoU (%)")
        twin.legend(fontsize=7, loc="lower right")
    ax.legend(fontsize=7, loc="lower left")
