"""Stage 2: check ONNX graphs against the PyTorch checkpoint they came from, on the same target images.

    python export/verify.py --checkpoint final.pt --onnx model.onnx model_fp16.onnx model_int8.onnx \\
        --dataset cityscapes:data/cityscapes --limit 100 --output verify.json

Per ONNX file: the largest |logit| difference (graphs with a logits output), the pixel agreement of the class maps,
and the mIoU of PyTorch and of ONNX Runtime against the labels. Both sides see the same pre-processed input
(export/prepost.py at the graph's input size; a dynamic graph runs at each image's own size unless
--height/--width are given); class maps are compared at the network resolution and scored at the label resolution
(nearest resize, as deployment does). The command exits with 1 when a precision misses its goal (GOALS).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from udaseg.cli import run_cli
from udaseg.export import prepost
from udaseg.export.onnx_utils import (
    ExportError,
    describe_io,
    get_metadata,
    graph_precision,
    input_spec,
    load_onnx,
    ort_session,
    setup_logging,
)
from udaseg.fileio import write_json

log = logging.getLogger("udaseg.export")

# Acceptance per precision: pixel agreement with PyTorch (%) and mIoU drop against PyTorch fp32 (points).
GOALS = {
    "fp32": {"min_agreement": 99.9, "max_miou_drop": 0.1},
    "fp16": {"min_agreement": 99.5, "max_miou_drop": 0.5},
    "int8": {"min_agreement": None, "max_miou_drop": 1.0},
}


@dataclass
class Graph:
    """One ONNX file under test and its running statistics."""

    path: Path
    session: object
    precision: str
    input_name: str
    input_dtype: str  # "float32" | "uint8"
    static_size: tuple[int, int] | None
    outputs: list[str]
    max_logit_diff: float = 0.0
    agree: int = 0
    pixels: int = 0
    cm: object = None  # ConfusionMatrix of ONNX Runtime's class maps
    ref_cm: object = None  # ConfusionMatrix of PyTorch's class maps at the same input
    shapes: set = field(default_factory=set)
    tensorrt: dict = field(default_factory=dict)  # TensorRT major -> parser report (export/trt_compat.py)


def _arch(name: str | None, kwargs: dict) -> str:
    return f"{name}({', '.join(f'{k}={v}' for k, v in sorted(kwargs.items()))})"


def open_graph(path: str | os.PathLike, spec: dict, num_classes: int, checkpoint_sha: str | None) -> Graph:
    """Load an ONNX file and check it belongs to the checkpoint (architecture, class count, outputs)."""
    from udaseg.evaluate import ConfusionMatrix

    model = load_onnx(path)
    meta = get_metadata(model)
    problems = []
    ours, theirs = _arch(meta.get("model"), meta.get("model_kwargs", {})), _arch(spec["name"], spec.get("kwargs", {}))
    if meta and ours != theirs:
        problems.append(f"architecture: ONNX {ours}, checkpoint {theirs}")
    if meta and int(meta.get("num_classes", -1)) != int(spec["num_classes"]):
        problems.append(f"classes: ONNX {meta.get('num_classes')}, checkpoint {spec['num_classes']}")
    io = describe_io(model)
    outputs = [t["name"] for t in io if t["kind"] == "output"]
    for t in io:
        if t["name"] == "logits" and isinstance(t["shape"][1], int) and t["shape"][1] != int(spec["num_classes"]):
            problems.append(f"logits output has {t['shape'][1]} channels, checkpoint {spec['num_classes']} classes")
    if problems:
        raise ExportError(f"{path} was not exported from this checkpoint: " + "; ".join(problems))
    if not {"labels", "logits"} & set(outputs):
        raise ExportError(f"{path}: outputs {outputs}; expected 'labels' and/or 'logits' (export/to_onnx.py)")
    if not meta:
        log.warning("%s has no udaseg metadata (not written by to_onnx.py): checking by tensor names only", path)
    elif checkpoint_sha and meta.get("checkpoint_sha256") not in (None, checkpoint_sha):
        log.warning(
            "%s was exported from another checkpoint file (%s); expect disagreement if its weights differ",
            path,
            meta.get("checkpoint"),
        )
    inp = input_spec(model)
    h, w = inp["shape"][2:]
    static = (h, w) if isinstance(h, int) and isinstance(w, int) else None
    return Graph(
        Path(path),
        ort_session(path),
        meta.get("precision") or graph_precision(model),
        inp["name"],
        inp["dtype"],
        static,
        outputs,
        cm=ConfusionMatrix(num_classes),
        ref_cm=ConfusionMatrix(num_classes),
        tensorrt=tensorrt_reports(model, path),
    )


def tensorrt_reports(model, path: str | os.PathLike) -> dict:
    """What the TensorRT 10/11 ONNX parsers will not take in this graph (logged; nothing needs TensorRT).

    Dynamic dims count as covered: to_trt.py asks for the optimisation profile when it builds.
    """
    from udaseg.export.trt_compat import installed_or_all, parser_report

    out = {}
    for major in installed_or_all():
        report = parser_report(model, major, has_profile=True)
        if not report.ok:
            log.warning("%s: %s", path, report.format())
        out[str(major)] = report.as_dict()
    return out


def _reference(model, x: np.ndarray) -> np.ndarray:
    """PyTorch logits at the input resolution: ``(C, H, W)`` float32 from ``(3, H, W)`` float32."""
    from udaseg.models import upsample

    with torch.no_grad():
        t = torch.from_numpy(x)[None]
        return upsample(model(t)["logits"], t.shape[-2:])[0].numpy()


def _score(cm, labels_net: np.ndarray, label: np.ndarray) -> None:
    pred = prepost.resize_nearest(labels_net.astype(np.uint8), *label.shape)
    cm.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(label.astype(np.int64)))


def _run_one(graph: Graph, model, sample, size: tuple[int, int] | None, cache: dict) -> None:
    h, w = graph.static_size or size or sample.image.shape[:2]
    key = (h, w, graph.input_dtype)
    if key not in cache:  # one PyTorch forward per distinct input, shared by the graphs that see it
        if graph.input_dtype == "uint8":
            net_in = prepost.preprocess_u8(sample.image, h, w)
            x = net_in.astype(np.float32) / np.float32(255)  # what the graph computes from its uint8 input
        else:
            net_in = x = prepost.preprocess(sample.image, h, w)
        logits = _reference(model, x)
        cache[key] = (net_in, logits, logits.argmax(0))
    net_in, ref_logits, ref_labels = cache[key]
    out = dict(zip(graph.outputs, graph.session.run(graph.outputs, {graph.input_name: net_in[None]})))
    if "logits" in out:
        graph.max_logit_diff = max(graph.max_logit_diff, float(np.abs(out["logits"][0] - ref_logits).max()))
    labels = out["labels"][0] if "labels" in out else out["logits"][0].argmax(0)
    graph.agree += int((labels.astype(np.int64) == ref_labels).sum())
    graph.pixels += ref_labels.size
    graph.shapes.add((h, w))
    _score(graph.cm, labels, sample.label)
    _score(graph.ref_cm, ref_labels, sample.label)


def verify(
    checkpoint: str | os.PathLike,
    onnx_paths: list[str | os.PathLike],
    dataset: str,
    split: str = "val",
    limit: int | None = None,
    size: tuple[int, int] | None = None,
    dataset_options: dict | None = None,
) -> dict:
    """Run PyTorch and ONNX Runtime on the same images; returns the report (see ``format_report``).

    ``size``: input (H, W) of dynamic graphs (default: each image's own); ``dataset_options``: extra
    ``build_dataset`` options (e.g. ``{"count": 8}`` for a small synthetic split).
    """
    from udaseg.export.samples import iter_samples, open_dataset
    from udaseg.export.to_onnx import file_sha256, load_checkpoint_model

    model, info = load_checkpoint_model(checkpoint)
    spec = info["model_spec"]
    sha = file_sha256(checkpoint)
    graphs = [open_graph(p, spec, int(spec["num_classes"]), sha) for p in onnx_paths]
    data = open_dataset(dataset, split=split, role="target", **(dataset_options or {}))
    if getattr(data, "num_classes", spec["num_classes"]) != int(spec["num_classes"]):
        raise ExportError(
            f"dataset {dataset} has {data.num_classes} classes, checkpoint {checkpoint} "
            f"{spec['num_classes']}: evaluate on a dataset with the model's classes"
        )
    n = 0
    for sample in iter_samples(data, limit):
        cache: dict = {}
        for g in graphs:
            _run_one(g, model, sample, size, cache)
        n += 1
    return _report(graphs, checkpoint, dataset, split, n)


def _report(graphs: list[Graph], checkpoint, dataset: str, split: str, n: int) -> dict:
    rows = []
    for g in graphs:
        goal = GOALS.get(g.precision, GOALS["fp32"])
        agreement = 100.0 * g.agree / max(g.pixels, 1)
        miou, ref_miou = 100 * g.cm.miou(), 100 * g.ref_cm.miou()
        row = {
            "onnx": str(g.path),
            "precision": g.precision,
            "input_dtype": g.input_dtype,
            "sizes": sorted(g.shapes),
            "max_logit_diff": g.max_logit_diff if "logits" in g.outputs else None,
            "pixel_agreement": agreement,
            "miou_pytorch": ref_miou,
            "miou_onnx": miou,
            "miou_drop": ref_miou - miou,
            "goal": goal,
            "tensorrt_parser": g.tensorrt,
        }
        row["passed"] = (goal["min_agreement"] is None or agreement >= goal["min_agreement"]) and (
            row["miou_drop"] <= goal["max_miou_drop"]
        )
        rows.append(row)
    return {"checkpoint": str(checkpoint), "dataset": dataset, "split": split, "images": n, "graphs": rows}


def format_report(report: dict) -> str:
    """A markdown table of ``verify``'s report."""
    lines = [
        f"verify: {report['checkpoint']} on {report['dataset']} ({report['split']}, {report['images']} images)",
        "| onnx | precision | max logit diff | pixel agreement % | mIoU PyTorch | mIoU ONNX | drop | goal met | "
        "TensorRT parser |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["graphs"]:
        diff = "-" if r["max_logit_diff"] is None else f"{r['max_logit_diff']:.3g}"
        trt = _parser_summary(r.get("tensorrt_parser", {}))
        lines.append(
            f"| {Path(r['onnx']).name} | {r['precision']} | {diff} | {r['pixel_agreement']:.3f} | "
            f"{r['miou_pytorch']:.2f} | {r['miou_onnx']:.2f} | {r['miou_drop']:+.2f} | "
            f"{'yes' if r['passed'] else 'NO'} | {trt or '-'} |"
        )
    return "\n".join(lines)


def _parser_summary(reports: dict) -> str:
    """``10: ok, 11: 2 errors`` from a row's tensorrt_parser entry."""
    return ", ".join(f"{k}: {'ok' if v['ok'] else str(len(v['errors'])) + ' errors'}" for k, v in reports.items())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="the checkpoint the ONNX files were exported from")
    p.add_argument("--onnx", required=True, nargs="+", help="one or more ONNX files (e.g. one per precision)")
    p.add_argument("--dataset", required=True, help="NAME[:ROOT] target dataset with labels")
    p.add_argument("--split", default="val", help="dataset split to score on")
    p.add_argument("--limit", type=int, default=None, help="at most this many images (spread over the split)")
    p.add_argument("--height", type=int, default=None, help="input height for dynamic graphs (default: image's)")
    p.add_argument("--width", type=int, default=None, help="input width for dynamic graphs (default: image's)")
    p.add_argument("--output", default=None, help="write the report as JSON here")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``udaseg-verify``: 0 when every graph meets its goal, 1 when one misses it, 2 for a user error."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    size = (args.height, args.width) if args.height and args.width else None
    report = verify(args.checkpoint, args.onnx, args.dataset, args.split, args.limit, size)
    print(format_report(report))
    if args.output:
        write_json(args.output, report, indent=1)
    failed = [r["onnx"] for r in report["graphs"] if not r["passed"]]
    if failed:
        log.error("goals missed (GOALS in export/verify.py) by: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
