"""Stage 1: checkpoint -> ONNX, with the pre/post-processing that belongs in the graph.

    python export/to_onnx.py --checkpoint runs/x/final.pt --output model.onnx --height 512 --width 1024
    python -m udaseg.export.to_onnx --checkpoint final.pt --output model_fp16.onnx --precision fp16 \\
        --calib cityscapes:data/cityscapes
    python -m udaseg.export.to_onnx --checkpoint final.pt --output model_int8.onnx --precision int8 \\
        --calib cityscapes:data/cityscapes --dynamic

The graph (mmdeploy's conventions, names fixed for every later stage):

- input ``input``: ``(B, 3, H, W)`` RGB, ``float32`` in [0, 1] (default) or ``uint8`` in [0, 255]
  (``--input-dtype uint8``: the division by 255 happens in the graph). ImageNet mean/std is the model's first
  layer, so no other normalisation is needed: feed export/prepost.py's ``preprocess`` (or ``preprocess_u8``).
- outputs at the input resolution (logits upsampled in the graph, bilinear, align_corners=False):
  ``labels`` ``(B, H, W)`` class ids, ``int32`` (default; TensorRT's ArgMax type) or ``uint8`` (mono8; cast via
  float because TensorRT has no int32 -> uint8 cast), and/or ``logits`` ``(B, C, H, W)`` float32.
- static shapes, or ``--dynamic`` batch/height/width (``--dynamic batch``: batch only).
- ``--precision fp16``: graph converted to float16 with float32 inputs/outputs, after an overflow check of every
  activation on sample images; ``int8``: Q/DQ model, symmetric, per-channel weights, calibrated on ``--calib``
  target images (the train split: the unlabelled target images UDA has).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from udaseg.cli import run_cli
from udaseg.export import prepost
from udaseg.export.onnx_utils import (
    INPUT_NAME,
    ExportError,
    describe_io,
    format_io,
    graph_precision,
    load_onnx,
    save_onnx,
    set_metadata,
    setup_logging,
)
from udaseg.export.profiles import runtime_spec

log = logging.getLogger("udaseg.export")

OUTPUT_MODES = ("labels", "logits", "both")
MIN_DYNAMIC_SIZE, MAX_DYNAMIC_SIZE = 32, 8192  # range of a dynamic height/width
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ExportConfig:
    height: int = 512  # input height (the example for dynamic graphs); Cityscapes evaluation size 512x1024
    width: int = 1024  # input width
    dynamic: str = "none"  # none | batch | all (batch, height and width)
    output_mode: str = "labels"  # labels | logits | both
    labels_dtype: str = "int32"  # int32 | uint8
    input_dtype: str = "float32"  # float32 ([0, 1]) | uint8 ([0, 255])
    precision: str = "fp32"  # fp32 | fp16 | int8
    calib: str | None = None  # NAME[:ROOT] of target images: int8 calibration and the fp16 range check
    calib_split: str = "train"  # unlabelled target images, never the split verify.py scores on
    calib_images: int = 32  # images for calibration / the fp16 range check
    calib_method: str = "minmax"  # minmax | entropy | percentile
    calib_options: dict = field(default_factory=dict)  # extra build_dataset options, e.g. {"count": 8}
    opset: int = 18  # the dynamo exporter's minimum

    def validate(self) -> None:
        choices = {
            "dynamic": ("none", "batch", "all"),
            "output_mode": OUTPUT_MODES,
            "labels_dtype": ("int32", "uint8"),
            "input_dtype": ("float32", "uint8"),
            "precision": PRECISIONS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ExportError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.height <= 0 or self.width <= 0:
            raise ExportError(f"height and width must be positive, got {self.height}x{self.width}")
        if self.dynamic == "all" and min(self.height, self.width) < MIN_DYNAMIC_SIZE:
            raise ExportError(
                f"a dynamic graph needs an example size of at least {MIN_DYNAMIC_SIZE} pixels a side, "
                f"got {self.height}x{self.width}"
            )
        if self.precision == "int8" and not self.calib:
            raise ExportError("--precision int8 needs calibration images: --calib NAME:ROOT (target domain)")


class SegmentationGraph(nn.Module):
    """What gets exported: input scaling, the model, the upsample to input size, and the class map."""

    def __init__(self, model: nn.Module, output_mode: str, labels_dtype: str, input_dtype: str) -> None:
        super().__init__()
        self.model, self.output_mode = model, output_mode
        self.labels_dtype, self.input_dtype = labels_dtype, input_dtype

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:  # (B, 3, H, W) -> labels (B, H, W), logits (B, C, H, W)
        from udaseg.models import upsample

        if self.input_dtype == "uint8":
            x = x.to(torch.float32) / 255.0
        logits = upsample(self.model(x)["logits"], x.shape[-2:])
        outputs = []
        if self.output_mode in ("labels", "both"):
            labels = logits.argmax(dim=1)  # int64 in ONNX; cast for TensorRT, which has no int64 ArgMax output
            # TensorRT casts to uint8 only from float: int64 -> float32 -> uint8 (exact for class ids < 2^24).
            labels = labels.to(torch.int32) if self.labels_dtype == "int32" else labels.float().to(torch.uint8)
            outputs.append(labels)
        if self.output_mode in ("logits", "both"):
            outputs.append(logits)
        return tuple(outputs)


def output_names(output_mode: str) -> list[str]:
    return {"labels": ["labels"], "logits": ["logits"], "both": ["labels", "logits"]}[output_mode]


def load_checkpoint_model(
    path: str | os.PathLike, expect_name: str | None = None, expect_classes: int | None = None
) -> tuple[nn.Module, dict]:
    """``udaseg.checkpoint.load_model`` with every failure as an ExportError naming the file and the mismatch."""
    from udaseg.checkpoint import load_model

    try:
        model, info = load_model(path, expect_name=expect_name, expect_classes=expect_classes)
    except (ValueError, KeyError) as e:  # CheckpointError is a ValueError; KeyError: unknown architecture
        raise ExportError(f"cannot export {path}: {e}") from e
    except RuntimeError as e:  # load_state_dict: same keys, other shapes (e.g. another class count)
        first = str(e).strip().splitlines()
        raise ExportError(
            f"{path}: weights do not fit the architecture its model_spec names "
            f"({info_line(path)}): {' '.join(first[:3])}"
        ) from e
    return model.eval(), info


def info_line(path: str | os.PathLike) -> str:
    from udaseg.checkpoint import load_checkpoint

    spec = load_checkpoint(path).get("model_spec", {})
    return f"{spec.get('name')!r} with {spec.get('num_classes')} classes"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dynamic_shapes(dynamic: str) -> tuple[dict, ...] | None:
    if dynamic == "none":
        return None
    dims: dict[int, object] = {0: torch.export.Dim("batch", min=1, max=256)}
    if dynamic == "all":
        dims[2] = torch.export.Dim("height", min=MIN_DYNAMIC_SIZE, max=MAX_DYNAMIC_SIZE)
        dims[3] = torch.export.Dim("width", min=MIN_DYNAMIC_SIZE, max=MAX_DYNAMIC_SIZE)
    return (dims,)


def export_fp32(graph: SegmentationGraph, path: Path, cfg: ExportConfig) -> None:
    """torch.onnx.export (dynamo) of ``graph`` to ``path``; raises if a requested dynamic dim came out static."""
    batch = 2 if cfg.dynamic != "none" else 1  # torch.export specialises size-1 dims: give batch 2
    dtype = torch.uint8 if cfg.input_dtype == "uint8" else torch.float32
    example = torch.zeros(batch, 3, cfg.height, cfg.width, dtype=dtype)
    names = output_names(cfg.output_mode)
    captured, torch_log = io.StringIO(), logging.getLogger("torch.onnx")
    level = torch_log.level
    if not log.isEnabledFor(logging.DEBUG):
        torch_log.setLevel(logging.ERROR)  # "torchvision is not installed" and the like
    try:
        with torch.no_grad(), contextlib.redirect_stdout(captured):  # the exporter prints progress lines
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_shapes=_dynamic_shapes(cfg.dynamic),
                opset_version=cfg.opset,
            )
    finally:
        torch_log.setLevel(level)
    log.debug("exporter output:\n%s", captured.getvalue())
    program.save(str(path))
    shape = describe_io(load_onnx(path, check=False))[0]["shape"]
    wanted = {"none": [], "batch": [0], "all": [0, 2, 3]}[cfg.dynamic]
    static = [i for i in wanted if isinstance(shape[i], int)]
    if static:
        raise ExportError(
            f"the exporter made input dims {static} static ({shape}) although --dynamic {cfg.dynamic} asked for "
            "them dynamic: the model's code specialises these sizes (e.g. int() on a tensor size). Export static "
            "shapes, or fix the model code"
        )


def sample_feeds(cfg: ExportConfig, limit: int) -> list[dict[str, np.ndarray]]:
    """Pre-processed calibration images (``cfg.calib``) as ONNX feeds; random images when no dataset is given."""
    from udaseg.export.precision import calibration_feeds
    from udaseg.export.samples import load_samples

    if cfg.calib:
        samples = load_samples(cfg.calib, split=cfg.calib_split, limit=limit, role="target", **cfg.calib_options)
        pre = prepost.preprocess_u8 if cfg.input_dtype == "uint8" else prepost.preprocess
        images = [pre(s.image, cfg.height, cfg.width) for s in samples]
    else:
        log.warning("no --calib dataset: the fp16 range check runs on random images; pass target images")
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (3, cfg.height, cfg.width)).astype(np.float32) / 255 for _ in range(2)]
        if cfg.input_dtype == "uint8":
            images = [(im * 255).astype(np.uint8) for im in images]
    return calibration_feeds(images, cfg.input_dtype)


def export_onnx(checkpoint: str | os.PathLike, output: str | os.PathLike, cfg: ExportConfig | None = None) -> Path:
    """Export ``checkpoint`` to ``output`` at ``cfg.precision``; returns the path. See the module docstring."""
    cfg = cfg or ExportConfig()
    cfg.validate()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model, info = load_checkpoint_model(checkpoint)
    graph = SegmentationGraph(model, cfg.output_mode, cfg.labels_dtype, cfg.input_dtype).eval()
    spec = info["model_spec"]
    meta = {
        "model": spec["name"],
        "num_classes": int(spec["num_classes"]),
        "model_kwargs": spec.get("kwargs", {}),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "weights": info["weights"],
        "export": asdict(cfg),
        "torch": torch.__version__,
        "graph_normalize": graph_normalization(model),
        "protocol": ((info.get("config") or {}).get("data") or {}).get("protocol"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"  # the file at `output` appears only once it is complete
        export_fp32(graph, fp32, cfg)
        fp32_model = load_onnx(fp32, check=False)
        fp32_meta = {**meta, "precision": "fp32", "graph_precision": "fp32"}
        set_metadata(fp32_model, {**fp32_meta, "runtime": runtime_spec(describe_io(fp32_model), fp32_meta)})
        save_onnx(fp32_model, output if cfg.precision == "fp32" else fp32)
        if cfg.precision != "fp32":
            convert_onnx(fp32, output, cfg.precision, cfg)
    load_onnx(output, check=True)  # onnx.checker full check of the file as written
    return output


def graph_normalization(model: nn.Module) -> dict | None:
    """The mean/std the model applies as its first layer (udaseg.models.Normalize), or None."""
    norm = getattr(model, "normalize", None)
    if norm is None or not hasattr(norm, "mean"):
        return None
    std = (1.0 / norm.inv_std) if hasattr(norm, "inv_std") else norm.std
    return {
        "mean": [round(float(v), 6) for v in norm.mean.flatten()],
        "std": [round(float(v), 6) for v in std.flatten()],
    }


def convert_onnx(
    fp32: str | os.PathLike, output: str | os.PathLike, precision: str, cfg: ExportConfig | None = None
) -> Path:
    """fp16 or int8 version of an fp32 ONNX written by ``export_onnx`` (its metadata carried over, updated)."""
    from udaseg.export.onnx_utils import get_metadata
    from udaseg.export.precision import convert_fp16, quantize_int8

    source = load_onnx(fp32)
    meta = get_metadata(source)
    if cfg is None:
        cfg = ExportConfig(**{**meta.get("export", {}), "precision": precision})
    if graph_precision(source) != "fp32":
        raise ExportError(f"{fp32}: expected an fp32 graph to convert, found {graph_precision(source)}")
    if precision == "fp16":
        model = convert_fp16(source, sample_feeds(cfg, cfg.calib_images))
    elif precision == "int8":
        if not cfg.calib:
            raise ExportError("int8 needs calibration images: --calib NAME:ROOT (target domain)")
        with tempfile.TemporaryDirectory() as tmp:  # onnxruntime writes the file itself: in a scratch folder
            quantize_int8(fp32, Path(tmp) / "int8.onnx", sample_feeds(cfg, cfg.calib_images), cfg.calib_method)
            model = load_onnx(Path(tmp) / "int8.onnx", check=False)
    else:
        raise ExportError(f"convert_onnx makes fp16 or int8 graphs, not {precision!r}")
    export = {**meta.get("export", {}), "precision": precision, "calib": cfg.calib, "calib_method": cfg.calib_method}
    new_meta = {**meta, "precision": precision, "graph_precision": graph_precision(model), "export": export}
    new_meta["runtime"] = runtime_spec(describe_io(model), new_meta)
    set_metadata(model, new_meta)
    save_onnx(model, output)
    log.info("wrote %s (%s)", output, precision)
    return Path(output)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    d = ExportConfig()
    p.add_argument("--checkpoint", required=True, help="udaseg checkpoint (.pt or .safetensors with model_spec)")
    p.add_argument("--output", required=True, help="ONNX file to write")
    p.add_argument("--height", type=int, default=d.height, help="input height (example height when dynamic)")
    p.add_argument("--width", type=int, default=d.width, help="input width (example width when dynamic)")
    p.add_argument(
        "--dynamic",
        nargs="?",
        const="all",
        default="none",
        choices=["none", "batch", "all"],
        help="dynamic batch/height/width ('--dynamic' alone: all; 'batch': batch only)",
    )
    p.add_argument("--output-mode", default=d.output_mode, choices=OUTPUT_MODES, help="class map, logits or both")
    p.add_argument("--labels-dtype", default=d.labels_dtype, choices=["int32", "uint8"], help="class map dtype")
    p.add_argument(
        "--input-dtype",
        default=d.input_dtype,
        choices=["float32", "uint8"],
        help="float32 in [0, 1] or uint8 in [0, 255] (scaled inside the graph)",
    )
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS, help="fp32, fp16 (converted) or int8 Q/DQ")
    p.add_argument("--calib", default=None, help="NAME[:ROOT] target images for int8 calibration / fp16 range check")
    p.add_argument("--calib-split", default=d.calib_split, help="split of --calib to use")
    p.add_argument("--calib-images", type=int, default=d.calib_images, help="number of calibration images")
    p.add_argument("--calib-method", default=d.calib_method, choices=["minmax", "entropy", "percentile"])
    p.add_argument("--opset", type=int, default=d.opset, help="ONNX opset (>= 18 for the dynamo exporter)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (exporter output included)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``udaseg-export-onnx``: exit code 0, or 2 with one line on stderr for a user error (udaseg.cli.run_cli)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    cfg = ExportConfig(
        height=args.height,
        width=args.width,
        dynamic=args.dynamic,
        output_mode=args.output_mode,
        labels_dtype=args.labels_dtype,
        input_dtype=args.input_dtype,
        precision=args.precision,
        calib=args.calib,
        calib_split=args.calib_split,
        calib_images=args.calib_images,
        calib_method=args.calib_method,
        opset=args.opset,
    )
    path = export_onnx(args.checkpoint, args.output, cfg)
    log.info("%s:\n%s", path, format_io(describe_io(load_onnx(path, check=False))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
