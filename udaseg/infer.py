"""Segment images, ROS 2 bags and videos with a ``.pt`` checkpoint, an ``.onnx`` graph or a TensorRT ``.engine``.

    python -m udaseg.infer --checkpoint runs/x/final.pt --input frames/ --output out/
    python -m udaseg.infer --checkpoint model_int8.onnx --input frame.png --output out/
    python -m udaseg.infer --checkpoint model_fp16.engine --input frames/ --output out/ --confidence
    python -m udaseg.infer --checkpoint model.onnx --provider tensorrt --input frames/ --output out/
    python -m udaseg.infer --checkpoint model.onnx --input drive.mcap --topic /camera/front/image_raw --output seg.mcap
    python -m udaseg.infer --checkpoint model.onnx --input dashcam.mp4 --output out/       # PNGs + overlay video

Images: per image ``<stem>_labels.png`` (mono8 train ids, 255 = none) and ``<stem>_color.png`` (Cityscapes
colours), at the image's own size; ``--confidence`` adds ``<stem>_confidence.png`` (max softmax probability x 255,
needs logits). Inputs sharing a stem (``a.png``, ``a.jpg``) keep their extension: ``a.png_labels.png``. An image
that cannot be read is reported and skipped; the summary at the end counts written and skipped inputs, and the
exit code is 1 when any was skipped (2 for a usage error).

Recordings (docs/recordings.md): a bag (``.mcap``, ``.db3`` or a bag folder; ``--topic`` names the camera) or a
video. ``--output X.mcap`` / ``X.db3`` writes a bag with ``<topic>/segmentation/labels`` (mono8), ``.../color``
(rgb8) and with ``--confidence`` ``.../confidence`` (mono8, or 32FC1 with ``--float-confidence``), header stamps
and frame ids copied; ``--output X.mp4`` a colour-overlay video; ``--output DIR`` PNGs per frame
(``frame<index>_labels.png``, ...) plus ``frames.csv`` (index, stamp, frame id), and for a video input the overlay
video ``DIR/<stem>_overlay.mp4``. ``--every N`` / ``--min-interval-s X`` subsample. A recording cut short is
processed up to the cut: the outputs keep those frames, the cut is reported, and the exit code is 1.

Every backend gets the same input (export/prepost.py: bilinear resize to the network size, [0, 1] or uint8, CHW)
and its class map goes through the same nearest resize back to the image. The network size is the graph's or
engine's static shape, else ``--height/--width``, else the image's own size. These steps run in the C++ runtime
(``udaseg._runtime``, built by ``pip install``; bit-identical to export/prepost.py and several times faster) when it
is importable, else in numpy: ``--prepost cpp`` / ``python`` chooses.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from udaseg.export import prepost
from udaseg.fileio import UserError

log = logging.getLogger("udaseg.infer")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")
CHECKPOINT_EXTS = (".pt", ".pth", ".safetensors")
VIDEO_EXTS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mpg", ".mpeg")
BAG_EXTS = (".mcap", ".db3")


class InferError(UserError, ValueError):
    """A wrong model, input or output: the CLI prints the message alone (exit code 2)."""


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
    raise InferError(f"{path}: unknown model type {suffix!r}; expected {CHECKPOINT_EXTS}, .onnx or .engine")


class CppPrePost:
    """export/prepost.py's steps through the C++ runtime's bindings (tests/export/test_runtime_cpp.py checks that
    they are bit-identical); the float confidence map's resize stays in numpy (the runtime resizes uint8 maps)."""

    name = "cpp"

    def __init__(self, runtime) -> None:
        from udaseg.data.labels import PALETTE

        self.rt = runtime
        self.palette = np.asarray(PALETTE, dtype=np.uint8)

    def preprocess(self, image: np.ndarray, height: int, width: int) -> np.ndarray:
        return self.rt.preprocess(np.ascontiguousarray(image), height, width)

    def preprocess_u8(self, image: np.ndarray, height: int, width: int) -> np.ndarray:
        return self.rt.preprocess_u8(np.ascontiguousarray(image), height, width)

    def argmax(self, logits: np.ndarray) -> np.ndarray:
        return self.rt.argmax(np.ascontiguousarray(logits, dtype=np.float32), "uint8")

    def confidence(self, logits: np.ndarray) -> np.ndarray:
        return self.rt.confidence(np.ascontiguousarray(logits, dtype=np.float32))

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        return self.rt.colorize(np.ascontiguousarray(labels, dtype=np.uint8), self.palette)

    def resize_nearest(self, labels: np.ndarray, height: int, width: int) -> np.ndarray:
        if labels.dtype != np.uint8:
            return prepost.resize_nearest(labels, height, width)
        return self.rt.resize_nearest(np.ascontiguousarray(labels), height, width)


class PythonPrePost:
    """export/prepost.py itself (numpy): the reference the C++ runtime is checked against."""

    name = "python"
    preprocess = staticmethod(prepost.preprocess)
    preprocess_u8 = staticmethod(prepost.preprocess_u8)
    argmax = staticmethod(prepost.argmax)
    confidence = staticmethod(prepost.confidence)
    colorize = staticmethod(prepost.colorize)
    resize_nearest = staticmethod(prepost.resize_nearest)


def load_prepost(kind: str = "auto"):
    """The pre/post steps: "cpp" (the C++ runtime; an error naming how to build it when it is missing), "python"
    (numpy), or "auto" (cpp when importable, else python)."""
    if kind == "python":
        return PythonPrePost()
    try:
        from udaseg import _runtime
    except ImportError as e:
        if kind == "cpp":
            raise InferError(
                "--prepost cpp: the C++ runtime udaseg._runtime is not built (pip install -e . builds it when a C++ "
                "compiler and pybind11 are present); use --prepost python"
            ) from e
        return PythonPrePost()
    return CppPrePost(_runtime)


def segment(
    backend,
    image: np.ndarray,
    size: tuple[int, int] | None = None,
    with_confidence: bool = False,
    ops=None,
) -> dict:
    """One ``(H, W, 3)`` uint8 RGB image -> ``{"labels": (H, W) uint8, "color": (H, W, 3)[, "confidence"]}``.

    ``ops``: the pre/post steps (``load_prepost``; default: numpy, export/prepost.py).
    """
    ops = ops or PythonPrePost()
    h, w = backend.input_size or size or image.shape[:2]
    pre = ops.preprocess_u8 if backend.input_dtype == "uint8" else ops.preprocess
    out = backend(pre(image, h, w)[None])  # (1, 3, h, w)
    logits = out["logits"][0] if "logits" in out else None
    labels = out["labels"][0].astype(np.uint8) if "labels" in out else ops.argmax(logits)  # (h, w)
    labels = ops.resize_nearest(labels, *image.shape[:2])
    result = {"labels": labels, "color": ops.colorize(labels)}
    if with_confidence:
        if logits is None:
            raise InferError("--confidence needs logits: export with --output-mode logits or both")
        conf = ops.confidence(logits)  # (h, w) float32 in (0, 1]
        result["confidence"] = ops.resize_nearest(np.rint(conf * 255).astype(np.uint8), *image.shape[:2])
        result["confidence_f32"] = ops.resize_nearest(conf, *image.shape[:2])
    return result


def list_images(path: str | os.PathLike) -> list[Path]:
    """``path`` itself if it is a file, else the images in the folder (sorted, not recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InferError(f"{path}: no such image file or folder")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise InferError(f"{path}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
    return images


def output_stems(paths: list[Path]) -> dict[Path, str]:
    """A distinct output stem per input: its stem, or its whole name where stems clash (a.png, a.jpg)."""
    names = {p: p.stem for p in paths}
    while True:
        counts = Counter(names.values())
        clash = [p for p in paths if counts[names[p]] > 1 and names[p] != p.name]
        if not clash:
            return names
        for p in clash:  # whole file names are distinct within a folder; repeat in case one meets another's stem
            names[p] = p.name


@dataclass
class Report:
    """What a run wrote and what it skipped (with reasons); `fault` ends a recording early."""

    written: list[Path] = field(default_factory=list)
    inputs_done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    fault: str | None = None

    def summary(self) -> str:
        lines = [f"{self.inputs_done} written, {len(self.skipped)} skipped"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        if self.fault:
            lines.append(f"stopped early: {self.fault}")
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        return not self.skipped and self.fault is None


def write_pngs(out_dir: Path, stem: str, result: dict) -> list[Path]:
    from udaseg.data.io import write_image, write_label

    paths = [out_dir / f"{stem}_labels.png", out_dir / f"{stem}_color.png"]
    write_label(paths[0], result["labels"])
    write_image(paths[1], result["color"])
    if "confidence" in result:
        paths.append(out_dir / f"{stem}_confidence.png")
        write_label(paths[2], result["confidence"])
    return paths


def progress(total: int | None, unit: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=not enabled, dynamic_ncols=True, smoothing=0.1)


def run_images(backend, args, report: Report) -> None:
    """Each image of --input: segmented and written, or skipped with its reason (one bad file stops nothing)."""
    from udaseg.data.io import DatasetError, read_image

    paths = list_images(args.input)
    stems = output_stems(paths)
    out_dir = Path(args.output)
    with progress(len(paths), "img", args.progress) as bar:
        for path in paths:
            bar.update()
            try:
                image = read_image(path)
            except DatasetError as e:
                report.skipped.append((str(path), str(e)))
                continue
            result = segment(backend, image, args.size, args.confidence, args.ops)
            report.written += write_pngs(out_dir, stems[path], result)
            report.inputs_done += 1
            log.debug("%s -> %s_{labels,color}.png", path, out_dir / stems[path])


def open_recording(args):
    """A BagSource or VideoSource for --input, or None for image files/folders."""
    path = Path(args.input)
    if is_bag(path):
        from udaseg.data.rosbag import BagSource

        return BagSource(path, args.topic)
    if path.suffix.lower() in VIDEO_EXTS:
        from udaseg.data.video import VideoSource

        if args.topic:
            raise InferError(f"--topic {args.topic}: {path} is a video, it has no topics")
        return VideoSource(path)
    if args.topic:
        raise InferError(f"--topic {args.topic} needs a bag as --input (.mcap, .db3 or a bag folder), got {path}")
    return None


def is_bag(path: Path) -> bool:
    if path.suffix.lower() in BAG_EXTS:
        return True
    return path.is_dir() and ((path / "metadata.yaml").is_file() or any(p.suffix in BAG_EXTS for p in path.iterdir()))


def recording_sinks(source, args, stack: contextlib.ExitStack) -> tuple[Path | None, object, object]:
    """(PNG folder or None, bag writer or None, video writer or None) for --output, entered on `stack`."""
    from udaseg.recordings_io import BAG_SUFFIXES, VIDEO_FORMATS, BagWriter, VideoWriter

    out = Path(args.output)
    suffix = out.suffix.lower()
    is_video = hasattr(source, "time_base")
    if suffix in BAG_SUFFIXES:
        topic = source.topic or f"/{re.sub(r'[^A-Za-z0-9_/]', '_', source.path.stem)}"
        return None, stack.enter_context(BagWriter(out, topic, args.confidence, args.float_confidence)), None
    if suffix in VIDEO_FORMATS:
        if not is_video:
            raise InferError(
                f"--output {out}: a video output needs a video input; for a bag write .mcap/.db3 or a folder"
            )
        return None, None, stack.enter_context(VideoWriter(out, source.time_base, source.rate))
    video = None
    if is_video:
        video = stack.enter_context(VideoWriter(out / f"{source.path.stem}_overlay.mp4", source.time_base, source.rate))
    return out, None, video


def run_recording(backend, source, args, report: Report) -> None:
    """Every kept frame of a bag topic or a video through the model into the sinks; a cut ends it early, and
    everything written before the cut is closed properly and kept."""
    from udaseg.data.recordings import RecordingError, Subsample
    from udaseg.fileio import write_text
    from udaseg.recordings_io import Background, overlay

    sub = Subsample(args.every, args.min_interval_s)
    rows = [["index", "stamp_ns", "frame_id", "name"]]
    with contextlib.ExitStack() as stack:
        out_dir, bag, video = recording_sinks(source, args, stack)
        background = Background()
        stack.callback(background.close)  # runs before the sinks close: every pending write lands first
        total = source.count() if hasattr(source, "count") and sub.every == 1 and not sub.min_interval_s else None
        bar = stack.enter_context(progress(total, "frame", args.progress))
        try:
            for frame in source.stream(sub):
                bar.update()
                if not hasattr(frame, "image"):  # a BadFrame: skipped, the stream goes on
                    report.skipped.append((f"frame {frame.index}", frame.reason))
                    continue
                result = segment(backend, frame.image, args.size, args.confidence, args.ops)
                name = f"frame{frame.index:06d}"
                if bag is not None:
                    bag.write(frame, result)  # queued on the bag's own writer thread
                if video is not None:
                    pts = round(frame.stamp_ns / 1e9 / source.time_base)
                    background.submit(lambda f=frame, r=result, t=pts: video.write(overlay(f.image, r["color"]), t))
                if out_dir is not None:
                    background.submit(lambda n=name, r=result: report.written.extend(write_pngs(out_dir, n, r)))
                    rows.append([frame.index, frame.stamp_ns, frame.frame_id, name])
                report.inputs_done += 1
        except RecordingError as e:
            report.fault = str(e)
        finally:
            if out_dir is not None and len(rows) > 1:
                text = io.StringIO()
                csv.writer(text, lineterminator="\n").writerows(rows)
                report.written.append(write_text(out_dir / "frames.csv", text.getvalue()))
    report.written += [w.path for w in (bag, video) if w is not None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m udaseg.infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="model: .pt/.safetensors checkpoint, .onnx or .engine")
    p.add_argument("--input", required=True, help="an image, a folder of images, a bag (.mcap/.db3/folder) or a video")
    p.add_argument("--output", required=True, help="a folder (PNGs), a bag (.mcap/.db3) or a video (.mp4/.mkv)")
    p.add_argument("--topic", default=None, help="the bag's camera topic (default: its only image topic)")
    p.add_argument("--every", type=int, default=1, help="recordings: every N-th frame")
    p.add_argument("--min-interval-s", type=float, default=0.0, help="recordings: at least this far apart (s)")
    p.add_argument("--height", type=int, default=None, help="network input height (dynamic models; default: image)")
    p.add_argument("--width", type=int, default=None, help="network input width (dynamic models; default: image)")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"], help="ONNX Runtime provider")
    p.add_argument("--device", default="cpu", help="torch device for .pt checkpoints (cpu, cuda)")
    p.add_argument("--confidence", action="store_true", help="also write the confidence (needs logits)")
    p.add_argument("--float-confidence", action="store_true", help="bag output: confidence as 32FC1 in [0, 1]")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument(
        "--prepost",
        default="auto",
        choices=["auto", "cpp", "python"],
        help="resize/argmax/colour steps: the C++ runtime or numpy (default: C++ when built)",
    )
    args = p.parse_args(argv)
    args.size = (args.height, args.width) if args.height and args.width else None
    if args.float_confidence:
        args.confidence = True
    return args


def infer(args: argparse.Namespace) -> Report:
    """Run --input through --checkpoint into --output; the report says what was written and skipped."""
    from udaseg.export.onnx_utils import ExportError
    from udaseg.export.to_trt import TensorRTUnavailable

    report = Report()
    args.ops = load_prepost(getattr(args, "prepost", "auto"))
    source = open_recording(args)  # before the model: a wrong topic is reported at once
    try:
        backend = load_backend(args.checkpoint, args.provider, args.device)
        if source is None:
            run_images(backend, args, report)
        else:
            run_recording(backend, source, args, report)
    except (ExportError, TensorRTUnavailable) as e:
        raise InferError(f"{args.checkpoint}: {e}") from e
    finally:
        if source is not None:
            source.close()
    return report


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = infer(args)
    print(report.summary(), file=sys.stderr if not report.ok else sys.stdout)
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    from udaseg.cli import run_cli

    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
