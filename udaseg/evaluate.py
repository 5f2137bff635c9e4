"""Evaluation: confusion matrix, mIoU under the 19/16/13-class protocols, whole-image and sliding-window inference.

    python -m udaseg.evaluate --checkpoint runs/x/final.pt --dataset cityscapes:data/cityscapes
    python -m udaseg.evaluate --checkpoint final.pt --dataset cityscapes:data/cityscapes --protocol 16 \\
        --mode slide --crop 512 512 --stride 341 341 --flip --output results.json

IoU_c = TP / (TP + FP + FN) from one confusion matrix accumulated over the whole split (not a mean of per-image
IoUs). A class absent from both predictions and labels has IoU NaN and is left out of the mean; a class present in
the labels but never predicted has IoU 0. Protocols 16/13 (SYNTHIA) average the IoUs of an index subset of the 19
classes, computed from the full 19x19 matrix: a pixel of a protocol class predicted as any other class is wrong.
``ConfusionMatrix`` reports fractions in [0, 1]; ``evaluate`` results are in percent, as the papers report them.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from udaseg.cli import run_cli
from udaseg.data.labels import CLASS_NAMES, IGNORE_INDEX, PROTOCOLS
from udaseg.fileio import UserError, WriteError, describe_os_error, write_json
from udaseg.models import upsample


# ----------------------------------------------------------------------------- confusion matrix
def protocol_indices(protocol: int, num_classes: int) -> list[int]:
    """Class indices averaged under ``protocol``. Models with other than 19 classes are scored on all classes."""
    if num_classes != 19:
        return list(range(num_classes))
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {sorted(PROTOCOLS)}")
    return list(PROTOCOLS[protocol])


class ConfusionMatrix:
    """Counts ``mat[label, pred]`` over all evaluated pixels (int64, on the device of the first update)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: str | torch.device | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, label: Tensor) -> None:
        """Add a batch: ``pred`` and ``label`` integer tensors of the same shape (any), ignore pixels skipped."""
        if pred.shape != label.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
        c = self.num_classes
        if self.mat.device != label.device:
            self.mat = self.mat.to(label.device)
        keep = label != self.ignore_index
        label, pred = label[keep].long(), pred[keep].long()
        if label.numel() and (int(label.min()) < 0 or int(label.max()) >= c):
            raise ValueError(f"label values must be in [0, {c}) or {self.ignore_index}; found {label.unique()[:10]}")
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= c):
            raise ValueError(f"predictions must be in [0, {c}); found {pred.unique()[:10]}")
        self.mat += torch.bincount(label * c + pred, minlength=c * c).view(c, c)

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all DDP ranks (no-op without an initialised process group); returns self."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.mat, op=torch.distributed.ReduceOp.SUM)
        return self

    def iou(self) -> Tensor:
        """Per-class IoU, float64 ``(C,)``, NaN for classes absent from both labels and predictions."""
        m = self.mat.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def miou(self, protocol: int = 19) -> float:
        """Mean IoU (fraction) over the protocol's classes, NaN classes left out (NaN if all are)."""
        iou = self.iou()[protocol_indices(protocol, self.num_classes)]
        iou = iou[~iou.isnan()]
        return float(iou.mean()) if iou.numel() else float("nan")

    def pixel_acc(self, protocol: int = 19) -> float:
        """Fraction of labelled pixels of the protocol's classes predicted correctly (NaN if there are none)."""
        idx = protocol_indices(protocol, self.num_classes)
        total = int(self.mat[idx].sum())
        return float(self.mat.diag()[idx].sum()) / total if total else float("nan")

    def result(self, protocol: int = 19, class_names: Sequence[str] | None = None) -> dict:
        """``{"miou", "per_class": {name: iou or None}, "protocol", "pixel_acc"}`` in percent (None: absent class)."""
        names = list(class_names) if class_names is not None else default_class_names(self.num_classes)
        iou = self.iou()
        per_class = {}
        for i in protocol_indices(protocol, self.num_classes):
            per_class[names[i]] = None if math.isnan(iou[i]) else round(100 * float(iou[i]), 4)
        return {
            "miou": 100 * self.miou(protocol),
            "per_class": per_class,
            "protocol": protocol if self.num_classes == 19 else self.num_classes,
            "pixel_acc": 100 * self.pixel_acc(protocol),
        }


def default_class_names(num_classes: int) -> list[str]:
    return list(CLASS_NAMES) if num_classes == len(CLASS_NAMES) else [f"class_{i}" for i in range(num_classes)]


# ----------------------------------------------------------------------------- inference
def _logits(model: nn.Module, images: Tensor) -> Tensor:
    """Model logits resized to the input size, float32: (B, 3, H, W) -> (B, C, H, W)."""
    return upsample(model(images)["logits"].float(), images.shape[-2:])


def _windows(size: int, crop: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride``, the last one flush with the end; [0] if crop >= size."""
    if crop >= size:
        return [0]
    starts = list(range(0, size - crop, stride))
    return starts + [size - crop]


def _slide(model: nn.Module, images: Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Sliding-window probabilities: each window's softmax, averaged where windows overlap (count map)."""
    b, _, h, w = images.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    probs, count = None, images.new_zeros(1, 1, h, w)
    for y in _windows(h, ch, stride[0]):
        for x in _windows(w, cw, stride[1]):
            p = _logits(model, images[:, :, y : y + ch, x : x + cw]).softmax(1)  # (B, C, ch, cw)
            if probs is None:
                probs = images.new_zeros(b, p.shape[1], h, w, dtype=torch.float32)
            probs[:, :, y : y + ch, x : x + cw] += p
            count[:, :, y : y + ch, x : x + cw] += 1
    return probs / count


@torch.inference_mode()
def predict(
    model: nn.Module,
    images: Tensor,
    mode: str = "whole",
    crop: tuple[int, int] = (512, 512),
    stride: tuple[int, int] = (341, 341),
    flip: bool = False,
) -> Tensor:
    """Class probabilities ``(B, C, H, W)`` (float32) for images ``(B, 3, H, W)`` in [0, 1].

    Args:
        model: a udaseg model (put in eval mode by the caller; see ``evaluate``).
        mode: ``"whole"`` (one forward of the full image) or ``"slide"`` (``crop`` windows every ``stride``
            pixels, the last window flush with the border; probabilities averaged where windows overlap).
        crop, stride: window size and step ``(h, w)`` for ``"slide"``; a crop larger than the image is clipped.
        flip: also run the horizontally flipped image and average the two probability maps.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and (min(stride) < 1 or stride[0] > crop[0] or stride[1] > crop[1]):
        raise ValueError(f"slide needs 1 <= stride <= crop; got crop {crop}, stride {stride} (pixels would be missed)")

    def run(x: Tensor) -> Tensor:
        return _logits(model, x).softmax(1) if mode == "whole" else _slide(model, x, crop, stride)

    probs = run(images)
    if flip:
        probs = (probs + run(images.flip(-1)).flip(-1)) / 2
    return probs


# ----------------------------------------------------------------------------- evaluation over a dataset
def _dataset_attr(dataset, name: str, default=None):
    """An attribute of a dataset or of the dataset under a ``Subset``/wrapper."""
    while dataset is not None:
        if hasattr(dataset, name):
            return getattr(dataset, name)
        dataset = getattr(dataset, "dataset", None)
    return default


def _batches(items: list[dict]):
    """Split a list of samples into runs of equal image and label size, stack each run: yields (images, labels)."""

    def key(item: dict) -> tuple:
        return tuple(item["image"].shape), tuple(item["label"].shape)

    run: list[dict] = []
    for item in items:
        if run and key(item) != key(run[0]):
            yield torch.stack([r["image"] for r in run]), torch.stack([r["label"] for r in run])
            run = []
        run.append(item)
    if run:
        yield torch.stack([r["image"] for r in run]), torch.stack([r["label"] for r in run])


def evaluate(
    model: nn.Module,
    dataset,
    protocol: int = 19,
    mode: str = "whole",
    crop: tuple[int, int] = (512, 512),
    stride: tuple[int, int] = (341, 341),
    flip: bool = False,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict:
    """mIoU of ``model`` on ``dataset`` (items ``{"image": (3, H, W), "label": (H, W)}``); runs on one process.

    Predictions are made at the image size and resized (bilinear, on the probabilities) to the label size when the
    two differ. The model is put in eval mode and its previous mode restored. Returns ``{"miou": percent,
    "per_class": {name: percent or None}, "protocol", "pixel_acc": percent, "images": n}``.
    """
    from tqdm import tqdm

    device = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    num_classes = int(getattr(model, "num_classes", 0) or _dataset_attr(dataset, "num_classes"))
    ignore = _dataset_attr(dataset, "ignore_index", IGNORE_INDEX)
    names = _dataset_attr(dataset, "class_names") or default_class_names(num_classes)
    cm = ConfusionMatrix(num_classes, ignore_index=ignore, device=device)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=list
    )
    was_training = model.training
    model.eval()
    try:
        for items in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
            for images, labels in _batches(items):
                images, labels = images.to(device), labels.to(device)
                probs = predict(model, images, mode=mode, crop=crop, stride=stride, flip=flip)
                cm.update(upsample(probs, labels.shape[-2:]).argmax(1), labels)
    finally:
        model.train(was_training)
    return {**cm.result(protocol, names), "images": len(dataset)}


def format_table(result: dict, before: dict | None = None) -> str:
    """Per-class IoU table (percent); with ``before`` (an earlier result) adds its column and the change."""
    has_before = before is not None
    head = f"{'class':<16}{'IoU':>8}" + (f"{'before':>9}{'change':>9}" if has_before else "")
    lines = [head, "-" * len(head)]

    def cell(v: float | None) -> str:
        return f"{'n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.2f}':>8}"

    for name, iou in result["per_class"].items():
        row = f"{name:<16}{cell(iou)}"
        if has_before:
            b = before.get("per_class", {}).get(name)
            delta = None if iou is None or b is None else iou - b
            row += f" {cell(b)}" + (f" {'':>8}" if delta is None else f" {delta:>+8.2f}")
        lines.append(row)
    lines.append("-" * len(head))
    tail = f"{'mIoU (' + str(result['protocol']) + ' cl.)':<16}{cell(result['miou'])}"
    if has_before:
        b, a = before.get("miou"), result["miou"]
        finite = a is not None and b is not None and not (math.isnan(a) or math.isnan(b))
        tail += f" {cell(b)}" + (f" {a - b:>+8.2f}" if finite else "")
    lines.append(tail)
    if "pixel_acc" in result:
        lines.append(f"{'pixel acc.':<16}{cell(result['pixel_acc'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m udaseg.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pt or .safetensors) with a model_spec")
    p.add_argument("--dataset", required=True, help="NAME:ROOT (cityscapes, gta5, synthia, folder, synthetic)")
    p.add_argument("--split", default="val")
    p.add_argument(
        "--protocol", type=int, default=19, choices=sorted(PROTOCOLS), help="classes averaged (16/13: SYNTHIA)"
    )
    p.add_argument("--mode", default="whole", choices=["whole", "slide"])
    p.add_argument("--crop", type=int, nargs=2, default=[512, 512], metavar=("H", "W"), help="slide window size")
    p.add_argument("--stride", type=int, nargs=2, default=[341, 341], metavar=("H", "W"), help="slide window step")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped prediction")
    p.add_argument("--weights", default="teacher", choices=["teacher", "model"], help="which weights of the checkpoint")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", help="write the result as JSON here")
    return p.parse_args(argv)


def check_output(path: str | Path) -> Path:
    """Fail before any computation when the result could not be written: the folder is made and a probe file is
    created and removed in it (an unwritable folder, a file in the way, a read-only disk: one line naming the path)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--output {path}: is a folder; expected a .json file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.probe-"):
            pass
    except OSError as e:
        raise WriteError(f"--output {path}: cannot write there ({describe_os_error(e)})") from e
    return path


def run(args: argparse.Namespace) -> dict:
    """Evaluate a checkpoint on a dataset split, print the per-class table, write JSON if asked; returns the result."""
    from udaseg.checkpoint import load_model
    from udaseg.data import build_dataset

    if args.output:
        check_output(args.output)
    model, info = load_model(args.checkpoint, prefer=args.weights)
    dataset = build_dataset(args.dataset, split=args.split, role="target")
    if not getattr(dataset, "labelled", True):  # an mIoU over no labelled pixel would be a silent NaN
        raise UserError(
            f"--dataset {args.dataset} (split {args.split}) has no labels: {dataset.unlabelled_reason}; "
            "evaluation needs a labelled split (for predictions without labels: python -m udaseg.infer)"
        )
    model = model.to(args.device)
    result = evaluate(
        model, dataset, protocol=args.protocol, mode=args.mode, crop=tuple(args.crop), stride=tuple(args.stride),
        flip=args.flip, batch_size=args.batch_size, device=args.device, num_workers=args.workers,
    )  # fmt: skip
    result.update(
        checkpoint=str(args.checkpoint), weights=info.get("weights"), iteration=info.get("iteration"),
        dataset=args.dataset, split=args.split, mode=args.mode, flip=args.flip,
        crop=args.crop if args.mode == "slide" else None, stride=args.stride if args.mode == "slide" else None,
    )  # fmt: skip
    print(format_table(result))
    print(f"{args.checkpoint} on {args.dataset} ({args.split}, {result['images']} images, {args.mode}"
          f"{', flip' if args.flip else ''}): mIoU {result['miou']:.2f} over {result['protocol']} classes")  # fmt: skip
    if args.output:
        write_json(args.output, result)  # strict JSON: NaN (no labelled pixel) is written as null
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: a user's mistake or an OS error is one line on stderr and exit code 2 (udaseg.cli)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
