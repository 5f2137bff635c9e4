"""Segment image files with a ``.pt`` checkpoint, an ``.onnx`` graph or a TensorRT ``.engine``: same pre/post.

    python -m udaseg.infer --checkpoint runs/x/final.pt --input frames/ --output out/
    python -m udaseg.infer --checkpoint model_int8.onnx --input frame.png --output out/
    python -m udaseg.infer --checkpoint model_fp16.engine --input frames/ --output out/ --confidence
    python -m udaseg.infer --checkpoint model.onnx --provider tensorrt --input frames/ --output out/

Per image ``<stem>_labels.png`` (mono8 train ids, 255 = none) and ``<stem>_color.png`` (Cityscapes colours), at the
image's own size; ``--confidence`` adds ``<stem>_confidence.png`` (max softmax probability x 255, needs logits).
Every backend gets the same input (export/prepost.py: bilinear resize to the network size, [0, 1] or uint8, CHW)
and its class map goes through the same nearest resize back to the image. The network size is the graph's or
engine's static shape, else ``--height/--width``, else the image's own size.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from udaseg.export import prepost

log = logging.getLogger("udaseg.infer")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")
CHECKPOINT_EXTS = (".pt", ".pth", ".safetensors")


class TorchBackend:
    """A checkpoint through PyTorch (eager); returns logits at the input size."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu") -> None:
        import torch

        from udaseg.export.to_onnx import load_checkpoint_model

        self.model, _ = load_checkpoint_model(path)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.input_size, self.input_dtype = None, "float32"

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        from udaseg.models import upsample

        with torch.no_grad():
            t = torch.from_numpy(x).to(self.device)
            return {"logits": upsample(self.model(t)["logits"], t.shape[-2:]).float().cpu().numpy()}


class OnnxBackend:
    """An ONNX graph through ONNX Runtime (CPU, or the CUDA/TensorRT provider)."""

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", threads: int | None = None) -> None:
        from udaseg.export.onnx_utils import input_spec, load_onnx, ort_session

        spec = input_spec(load_onnx(path))
        if provider == "cpu":
            self.session = ort_session(path, threads=threads)
        else:
            from udaseg.export.ort_providers import make_session

            self.session = make_session(path, provider, cache_dir=Path(path).with_suffix(".ort_cache"))
        self.expected = spec["shape"]
        h, w = spec["shape"][2:]
        self.input_size = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        self.input_name, self.input_dtype = spec["name"], spec["dtype"]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        from udaseg.export.onnx_utils import check_input_shape

        check_input_shape(tuple(x.shape), self.expected, self.input_name)
        return dict(zip(self.outputs, self.session.run(self.outputs, {self.input_name: x})))


class EngineBackend:
    """A TensorRT engine (export/to_trt.py) through export/trt_runtime.py."""

    def __init__(self, path: str | os.PathLike) -> None:
        from udaseg.export.trt_runtime import TrtRunner

        self.runner = TrtRunner(path)
        p = self.runner.profile
        self.input_size = tuple(p.opt[2:]) if p.is_static else None
        self.input_dtype = self.runner.input_dtype

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner(x)


def load_backend(path: str | os.PathLike, provider: str = "cpu", device: str = "cpu"):
    """The backend for ``path`` by its suffix: .pt/.pth/.safetensors, .onnx, .engine/.plan."""
    suffix = Path(path).suffix.lower()
    if suffix in CHECKPOINT_EXTS:
        return TorchBackend(path, device)
    if suffix == ".onnx":
        return OnnxBackend(path, provider)
    if suffix in (".engine", ".plan", ".trt"):
        return EngineBackend(path)
    raise ValueError(f"{path}: unknown model type {suffix!r}; expected {CHECKPOINT_EXTS}, .onnx or .engine")


def segment(backend, image: np.ndarray, size: tuple[int, int] | None = None, with_confidence: bool = False) -> dict:
    """One ``(H, W, 3)`` uint8 RGB image -> ``{"labels": (H, W) uint8, "color": (H, W, 3)[, "confidence"]}``."""
    h, w = backend.input_size or size or image.shape[:2]
    pre = prepost.preprocess_u8 if backend.input_dtype == "uint8" else prepost.preprocess
    out = backend(pre(image, h, w)[None])  # (1, 3, h, w)
    logits = out["logits"][0] if "logits" in out else None
    labels = out["labels"][0].astype(np.uint8) if "labels" in out else prepost.argmax(logits)  # (h, w)
    labels = prepost.resize_nearest(labels, *image.shape[:2])
    result = {"labels": labels, "color": prepost.colorize(labels)}
    if with_confidence:
        if logits is None:
            raise ValueError("--confidence needs logits: export with --output-mode logits or both")
        conf = prepost.confidence(logits)
        result["confidence"] = prepost.resize_nearest(np.rint(conf * 255).astype(np.uint8), *image.shape[:2])
    return result


def list_images(path: str | os.PathLike) -> list[Path]:
    """``path`` itself if it is a file, else the images in the folder (sorted, not recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such image file or folder")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise FileNotFoundError(f"{path}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
    return images


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="model: .pt/.safetensors checkpoint, .onnx or .engine")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="folder for <stem>_labels.png and <stem>_color.png")
    p.add_argument("--height", type=int, default=None, help="network input height (dynamic models; default: image)")
    p.add_argument("--width", type=int, default=None, help="network input width (dynamic models; default: image)")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"], help="ONNX Runtime provider")
    p.add_argument("--device", default="cpu", help="torch device for .pt checkpoints (cpu, cuda)")
    p.add_argument("--confidence", action="store_true", help="also write <stem>_confidence.png (needs logits)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    from udaseg.data.io import read_image, write_image, write_label

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    size = (args.height, args.width) if args.height and args.width else None
    backend = load_backend(args.checkpoint, args.provider, args.device)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in list_images(args.input):
        result = segment(backend, read_image(path), size, args.confidence)
        write_label(out_dir / f"{path.stem}_labels.png", result["labels"])
        write_image(out_dir / f"{path.stem}_color.png", result["color"])
        written += [out_dir / f"{path.stem}_labels.png", out_dir / f"{path.stem}_color.png"]
        if "confidence" in result:
            write_label(out_dir / f"{path.stem}_confidence.png", result["confidence"])
            written.append(out_dir / f"{path.stem}_confidence.png")
        log.info("%s -> %s_{labels,color}.png", path, out_dir / path.stem)
    return written


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # ExportError, TensorRTUnavailable, ...
        raise SystemExit(f"udaseg.infer: {e}") from None
