"""How fast does a udaseg model run per backend and precision, and what does each precision cost in mIoU?

    python benchmarks/bench_infer.py --checkpoint runs/<run>/final.pt             # CPU: PyTorch, ONNX Runtime
    python benchmarks/bench_infer.py --checkpoint final.pt --device cuda          # + torch.compile, TensorRT
    python benchmarks/bench_infer.py --sizes 512x1024 --iters 10                  # quicker
    python benchmarks/bench_infer.py --model segformer_mitb0 --output benchmarks/results/infer-cpu-segformer_mitb0
    python benchmarks/bench_infer.py --recording-only --threads 1 --bag-frames 12  # a bag around ONNX Runtime

Latency: batch 1 at 1024x512 and 2048x1024 (HxW 512x1024, 1024x2048), the network call only (input already
pre-processed, outputs back on the host), ``--warmup`` calls then ``--iters`` timed ones: median, p90 and
throughput (1000 / mean ms). Backends: PyTorch eager; on a GPU also fp16 autocast and ``torch.compile`` with CUDA
graphs; ONNX Runtime fp32 and int8 (Q/DQ) on the CPU, fp32/fp16 on CUDA; TensorRT engines (fp16, int8) where
TensorRT and a GPU are present. Pre/post-processing (export/prepost.py and the C++ runtime: 1024x2048 camera frame
to the network input, and logits to class map and colours at the frame size) is timed separately ("pre", "post").

Accuracy: mIoU of PyTorch, ONNX fp32, fp16 and int8 on the target validation set at its own resolution (the
synthetic benchmark's 128x256: the model was trained there; latency sizes are deployment sizes), via
export/verify.py. Without a trained ``--checkpoint`` a randomly initialised model is timed and mIoU is recorded
as not measured. Results: benchmarks/results/infer-<device>.json and .md (named by device).

Recordings (``--bag-frames N``, CPU): ``python -m udaseg.infer``'s loop over an MCAP and a sqlite3 bag of N rgb8
camera frames at the network size (512x1024), ONNX Runtime fp32, each stage timed per frame: reading and decoding
the message, pre-processing + post-processing (Python), the ONNX Runtime call, and writing the labels (mono8) and
colour (rgb8) messages (closing the bag amortised over the frames). The goal: reading + writing < 10 % of the ONNX
Runtime time. ``--recording-only`` runs just these rows (results: benchmarks/results/infer-bag-<device>).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CAMERA = (1024, 2048)  # (H, W) of the frames pre/post-processing is timed on (Cityscapes' camera)


def timeit(fn, warmup: int, iters: int, sync=lambda: None) -> dict:
    """Median, p90 (ms) and throughput (1/s) of ``fn()`` over ``iters`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - start))
    return {
        "median_ms": statistics.median(times),
        "p90_ms": float(np.percentile(times, 90)),
        "throughput_fps": 1000 / statistics.mean(times),
        "iters": iters,
    }


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def random_checkpoint(folder: Path, name: str = "compact") -> Path:
    """A randomly initialised ``name`` model (``--model``: compact, segformer_mitb0, daformer_mitb5, ...)."""
    from udaseg.checkpoint import save_checkpoint
    from udaseg.models import build_model

    torch.manual_seed(0)
    spec = {"name": name, "num_classes": 19, "kwargs": {}}
    return save_checkpoint(folder / "random.pt", {"model": build_model(name).state_dict(), "model_spec": spec})


def export(
    checkpoint: Path, out: Path, size: tuple[int, int], precision: str, calib: str, calib_images: int, mode: str
) -> Path:
    """The ``precision`` graph at ``size`` with outputs ``mode`` (exported once, then converted)."""
    from udaseg.export.to_onnx import ExportConfig, convert_onnx, export_onnx

    fp32 = out / f"model_{size[0]}x{size[1]}_{mode}_fp32.onnx"
    if not fp32.exists():
        export_onnx(checkpoint, fp32, ExportConfig(height=size[0], width=size[1], output_mode=mode))
    if precision == "fp32":
        return fp32
    path = fp32.with_name(fp32.name.replace("fp32", precision))
    cfg = ExportConfig(height=size[0], width=size[1], output_mode=mode, calib=calib, calib_images=calib_images)
    return convert_onnx(fp32, path, precision, cfg) if not path.exists() else path


def torch_rows(checkpoint: Path, size: tuple[int, int], device: str, args) -> list[dict]:
    from udaseg.export.to_onnx import load_checkpoint_model
    from udaseg.models import upsample

    model, _ = load_checkpoint_model(checkpoint)
    model.to(device)
    x = torch.rand(1, 3, *size, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []

    def run(m, autocast: bool = False):  # the work of the "labels" graph: upsample to the input, argmax
        with torch.no_grad(), torch.autocast("cuda", torch.float16, enabled=autocast):
            return upsample(m(x)["logits"], size).argmax(1).to(torch.int32).cpu()

    rows.append(
        {"backend": "pytorch eager", "precision": "fp32", **timeit(lambda: run(model), args.warmup, args.iters, sync)}
    )
    if device.startswith("cuda"):
        rows.append(
            {
                "backend": "pytorch eager",
                "precision": "fp16 autocast",
                **timeit(lambda: run(model, True), args.warmup, args.iters, sync),
            }
        )
        compiled = torch.compile(model, mode="reduce-overhead")  # CUDA graphs
        rows.append(
            {
                "backend": "torch.compile (CUDA graphs)",
                "precision": "fp16 autocast",
                **timeit(lambda: run(compiled, True), args.warmup + 3, args.iters, sync),
            }
        )
    return rows


def onnx_rows(graphs: dict[str, Path], size: tuple[int, int], device: str, args) -> list[dict]:
    from udaseg.export.onnx_utils import ort_session

    rows = []
    x = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
    for precision, path in graphs.items():
        if device.startswith("cuda"):
            if precision == "int8":
                continue  # Q/DQ on the CUDA provider falls back to float kernels: TensorRT is the int8 path
            from udaseg.export.ort_providers import make_session

            session, backend = make_session(path, "cuda"), "onnxruntime cuda"
        else:
            session, backend = ort_session(path, threads=args.threads), "onnxruntime cpu"
        rows.append(
            {
                "backend": backend,
                "precision": precision,
                **timeit(lambda s=session: s.run(None, {"input": x}), args.warmup, args.iters),
            }
        )
    return rows


def tensorrt_rows(graphs: dict[str, Path], size: tuple[int, int], out: Path, args) -> list[dict]:
    """TensorRT engines from the fp16 and int8 graphs, where TensorRT and a GPU exist (else one row saying why)."""
    from udaseg.export.to_trt import TensorRTUnavailable, build_engine

    rows = []
    for precision in ("fp16", "int8"):
        engine = out / f"model_{size[0]}x{size[1]}_{precision}.engine"
        try:
            meta = build_engine(graphs[precision], engine, precision, timing_cache=out / "timing.cache")
            from udaseg.export.trt_runtime import TrtRunner

            runner = TrtRunner(engine)
            x = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
            rows.append(
                {
                    "backend": f"tensorrt {meta['tensorrt']}",
                    "precision": precision,
                    **timeit(lambda r=runner, x=x: r(x), args.warmup, args.iters),
                }
            )
        except TensorRTUnavailable as e:
            return [{"backend": "tensorrt", "precision": "-", "skipped": str(e).split(";")[0]}]
    return rows


def prepost_rows(size: tuple[int, int], args) -> list[dict]:
    """A 1024x2048 camera frame -> network input; logits -> class map at the frame size + colours. Python, C++."""
    from udaseg.export import prepost

    (h, w), (fh, fw) = size, CAMERA
    frame = np.random.default_rng(0).integers(0, 256, (fh, fw, 3), dtype=np.uint8)
    logits = np.random.default_rng(1).normal(size=(19, h, w)).astype(np.float32)

    def post_py():
        return prepost.colorize(prepost.resize_nearest(prepost.argmax(logits), fh, fw))

    rows = [
        {"backend": "prepost python", "precision": "pre", **timeit(lambda: prepost.preprocess(frame, h, w), 1, 5)},
        {"backend": "prepost python", "precision": "post", **timeit(post_py, 1, 5)},
    ]
    try:
        import udaseg._runtime as rt
    except ImportError:
        return rows
    palette = rt.cityscapes_palette()

    def post_cpp():
        return rt.colorize(rt.resize_nearest(rt.argmax(logits), fh, fw), palette)

    rows += [
        {"backend": "prepost C++", "precision": "pre", **timeit(lambda: rt.preprocess(frame, h, w), 2, 10)},
        {"backend": "prepost C++", "precision": "post", **timeit(post_cpp, 2, 10)},
    ]
    return rows


def stats(times_ms: list[float]) -> dict:
    return {
        "median_ms": statistics.median(times_ms),
        "p90_ms": float(np.percentile(times_ms, 90)),
        "throughput_fps": 1000 / statistics.mean(times_ms),
        "iters": len(times_ms),
    }


def write_camera_bag(path: Path, storage: str, frames: int, size: tuple[int, int]) -> Path:
    """A bag (rosbags' folder layout) of `frames` random rgb8 images on /cam; returns its storage file."""
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import StoragePlugin

    from udaseg.data.rosbag import typestore
    from udaseg.recordings_io import image_msg

    store, rng = typestore(), np.random.default_rng(0)
    with Writer(path, version=9, storage_plugin=StoragePlugin[storage]) as writer:
        conn = writer.add_connection("/cam", "sensor_msgs/msg/Image", typestore=store)
        for i in range(frames):
            msg = image_msg(store.types, rng.integers(0, 256, (*size, 3), dtype=np.uint8), "rgb8", i * 10**8, "cam")
            writer.write(conn, i * 10**8, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    return next(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))


def recording_rows(graph: Path, size: tuple[int, int], out: Path, args) -> list[dict]:
    """`udaseg.infer.run_recording` over a bag (bag in, bag out), the real loop with its background writer: the
    wall time per frame outside `segment` is what reading and writing add to the model."""
    import udaseg.infer as infer
    from udaseg.data.recordings import Subsample
    from udaseg.data.rosbag import BagSource

    backend = infer.OnnxBackend(graph, threads=args.threads)
    backend(np.zeros((1, 3, *size), np.float32))  # warm-up outside the timed loop
    rows, real_segment = [], infer.segment
    for storage, suffix in (("MCAP", ".mcap"), ("SQLITE3", ".db3")):
        path = write_camera_bag(out / f"bench_{storage}", storage, args.bag_frames, size)
        model: list[float] = []
        seg: list[float] = []

        def timed_segment(*a, seg=seg, **kw):
            start = time.perf_counter()
            result = real_segment(*a, **kw)
            seg.append(1000 * (time.perf_counter() - start))
            return result

        ns = argparse.Namespace(
            every=1,
            min_interval_s=0.0,
            size=None,
            confidence=False,
            float_confidence=False,
            progress=False,
            output=str(out / f"seg{suffix}"),
            ops=infer.load_prepost("auto"),  # what `python -m udaseg.infer` uses: C++ when built
        )
        source = BagSource(path, "/cam")
        infer.segment = timed_segment
        try:
            start = time.perf_counter()
            infer.run_recording(_Timed(backend, model), source, ns, infer.Report())
            wall_ms = 1000 * (time.perf_counter() - start) / args.bag_frames
        finally:
            infer.segment = real_segment
        reads = []
        frames = source.stream(Subsample())
        for _ in range(args.bag_frames):
            t0 = time.perf_counter()
            next(frames)
            reads.append(1000 * (time.perf_counter() - t0))
        source.close()
        outside = wall_ms - statistics.mean(seg)
        rows += [
            {"backend": f"bag {suffix}: read + decode", "precision": "rgb8", **stats(reads)},
            {
                "backend": f"bag {suffix}: pre + post ({ns.ops.name})",
                "precision": "-",
                **stats([s - m for s, m in zip(seg, model)]),
            },
            {"backend": f"bag {suffix}: onnxruntime cpu", "precision": "fp32", **stats(model)},
            {
                "backend": f"bag {suffix}: loop outside the model (read + write)",
                "precision": "wall",
                **stats([outside]),
            },
        ]
    return rows


class _Timed:
    """A backend whose calls are timed into `times` (ms); segment() reads input_size/input_dtype from it."""

    def __init__(self, backend, times: list[float]) -> None:
        self.backend, self.times = backend, times
        self.input_size, self.input_dtype = backend.input_size, backend.input_dtype

    def __call__(self, x):
        start = time.perf_counter()
        result = self.backend(x)
        self.times.append(1000 * (time.perf_counter() - start))
        return result


def recording_overheads(rows: list[dict]) -> list[str]:
    """'bag .mcap: reading + writing = 4.1 % of the ONNX Runtime time' lines."""
    lines = []
    for suffix in (".mcap", ".db3"):
        median = {
            r["backend"].split(": ", 1)[1]: r["median_ms"] for r in rows if r["backend"].startswith(f"bag {suffix}:")
        }
        if median:
            io_ms = median["loop outside the model (read + write)"]
            prepost = next(k for k in median if k.startswith("pre + post"))
            lines.append(
                f"bag {suffix}: reading + writing add {io_ms:.1f} ms a frame = "
                f"{100 * io_ms / median['onnxruntime cpu']:.1f} % of the ONNX Runtime time "
                f"({median['onnxruntime cpu']:.1f} ms; goal < 10 %); {prepost} {median[prepost]:.1f} ms"
            )
    return lines


def accuracy(checkpoint: Path, trained: bool, out: Path, args) -> dict:
    """mIoU per precision on the target validation set at its own size (export/verify.py)."""
    if not trained:
        return {"measured": False, "reason": "no trained --checkpoint given: a randomly initialised model was timed"}
    from udaseg.export.samples import open_dataset
    from udaseg.export.verify import verify

    image = open_dataset(args.dataset, split="val").load(0)[0]
    size = image.shape[:2]
    graphs = [export(checkpoint, out, size, p, args.calib, args.calib_images, "both") for p in ("fp32", "fp16", "int8")]
    report = verify(checkpoint, graphs, args.dataset, limit=args.val_limit)
    report["size"] = list(size)
    return {"measured": True, **report}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# Inference benchmark: {env['device_name']}",
        "",
        f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, threads {env['threads']}, "
        f"load average {env['load_before']} -> {env['load_after']}; checkpoint: {result['checkpoint']} "
        f"(model {result.get('model', 'compact')})",
        "",
        "| size (HxW) | backend | precision | median ms | p90 ms | images/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["latency"]:
        if "skipped" in r:
            lines.append(f"| {r['size']} | {r['backend']} | - | skipped: {r['skipped']} | | |")
        else:
            lines.append(
                f"| {r['size']} | {r['backend']} | {r['precision']} | {r['median_ms']:.1f} | "
                f"{r['p90_ms']:.1f} | {r['throughput_fps']:.2f} |"
            )
    if max(env["load_before"], env["load_after"]) > (os.cpu_count() or 1):
        lines.append("\nThe machine was shared (load average above its core count): compare rows within this file.")
    for size in dict.fromkeys(r["size"] for r in result["latency"]):
        median = {(r["backend"], r["precision"]): r.get("median_ms") for r in result["latency"] if r["size"] == size}
        ort = median.get(("onnxruntime cpu", "fp32")) or median.get(("onnxruntime cuda", "fp32"))
        if ort and median.get(("pytorch eager", "fp32")):
            speedup = median[("pytorch eager", "fp32")] / ort
            lines.append(f"\n{size}: ONNX Runtime fp32 is {speedup:.2f}x PyTorch eager fp32 (goal: >= 1).")
    bag_lines = recording_overheads(result["latency"])
    if bag_lines:
        lines += ["", "Recordings (`python -m udaseg.infer` on a bag, per frame):", ""] + [f"- {b}" for b in bag_lines]
    acc = result["accuracy"]
    lines += ["", "## mIoU per precision (target validation set)", ""]
    if not acc["measured"]:
        lines.append(f"Not measured: {acc['reason']}.")
    else:
        lines += [
            f"{acc['dataset']} {acc['split']}, {acc['images']} images at {acc['size'][0]}x{acc['size'][1]}",
            "",
            "| precision | mIoU | vs PyTorch fp32 | pixel agreement % | max logit diff |",
            "|---|---|---|---|---|",
        ]
        for r in acc["graphs"]:
            diff = "-" if r["max_logit_diff"] is None else f"{r['max_logit_diff']:.3g}"
            lines.append(
                f"| {r['precision']} | {r['miou_onnx']:.2f} | {-r['miou_drop']:+.2f} | "
                f"{r['pixel_agreement']:.3f} | {diff} |"
            )
        lines.append(f"\nPyTorch fp32 mIoU: {acc['graphs'][0]['miou_pytorch']:.2f}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="trained checkpoint (omit: random weights, mIoU not measured)")
    p.add_argument("--model", default="compact", help="model timed without --checkpoint (e.g. segformer_mitb0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"], help="network input sizes HxW")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    p.add_argument("--iters", type=int, default=20, help="timed calls")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for PyTorch and ONNX Runtime")
    p.add_argument("--dataset", default="synthetic", help="target dataset NAME[:ROOT] for mIoU")
    p.add_argument("--calib", default=None, help="int8 calibration images NAME[:ROOT] (default: --dataset)")
    p.add_argument("--calib-images", type=int, default=32, help="int8 calibration images")
    p.add_argument("--val-limit", type=int, default=None, help="at most this many validation images")
    p.add_argument("--output", default=None, help="results stem (default benchmarks/results/infer-<device>)")
    p.add_argument("--bag-frames", type=int, default=10, help="CPU, 512x1024: frames of the bag rows (0: none)")
    p.add_argument("--recording-only", action="store_true", help="only the bag rows (results infer-bag-<device>)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    import onnxruntime

    from udaseg.export.onnx_utils import setup_logging

    args = parse_args(argv)
    setup_logging()
    args.calib = args.calib or args.dataset
    torch.set_num_threads(args.threads)
    name = ("infer-bag-" if args.recording_only else "infer-") + ("cpu" if args.device == "cpu" else "cuda")
    stem = Path(args.output) if args.output else RESULTS / name
    env = {
        "device": args.device,
        "device_name": device_name(args.device),
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": sys.version.split()[0],
        "load_before": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        trained = args.checkpoint is not None
        checkpoint = Path(args.checkpoint) if trained else random_checkpoint(out, args.model)
        latency = []
        for text in args.sizes:
            size = tuple(int(v) for v in text.lower().split("x"))
            # CPU: fp32 and int8 (ONNX Runtime's CPU kernels have no fast fp16 path); GPU: all three.
            precisions = ("fp32", "int8") if args.device == "cpu" else ("fp32", "fp16", "int8")
            if args.recording_only:
                precisions = ("fp32",)
            graphs = {p: export(checkpoint, out, size, p, args.calib, 8, "labels") for p in precisions}
            rows = []
            if not args.recording_only:
                rows += torch_rows(checkpoint, size, args.device, args)
                rows += onnx_rows(
                    {p: g for p, g in graphs.items() if p != "int8" or args.device == "cpu"}, size, args.device, args
                )
                if args.device != "cpu":
                    rows += tensorrt_rows(graphs, size, out, args)
                rows += prepost_rows(size, args)
            if args.device == "cpu" and args.bag_frames > 0 and size == (512, 1024):
                rows += recording_rows(graphs["fp32"], size, out, args)
            latency += [{"size": text, **r} for r in rows]
            print(
                f"{text}: " + ", ".join(f"{r['backend']} {r['precision']} {r.get('median_ms', 0):.1f} ms" for r in rows)
            )
        acc = (
            accuracy(checkpoint, trained, out, args)
            if not args.recording_only
            else {"measured": False, "reason": "--recording-only"}
        )
    env["load_after"] = round(os.getloadavg()[0], 2)
    result = {
        "checkpoint": args.checkpoint,
        "model": args.model if args.checkpoint is None else "from the checkpoint's model_spec",
        "environment": env,
        "args": vars(args),
        "latency": latency,
        "accuracy": acc,
    }
    from udaseg.fileio import write_json, write_text

    write_json(f"{stem}.json", result, indent=1)
    write_text(f"{stem}.md", markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
