"""Stage 3: ONNX -> TensorRT engine, for TensorRT 10 and 11, with its metadata written beside it.

    python export/to_trt.py --onnx model_fp16.onnx --engine model_fp16.engine
    python -m udaseg.export.to_trt --onnx model.onnx --engine model.engine --precision fp16 \\
        --min 1x3x512x1024 --opt 1x3x1024x2048 --max 1x3x1024x2048 --workspace 4096 --timing-cache trt.cache
    python -m udaseg.export.to_trt --onnx model_fp16.onnx --engine trt_cache/ --ort-provider tensorrt

Precision comes from the ONNX graph (export/to_onnx.py --precision fp16|int8), on both versions: the network is
built strongly typed, so the engine computes what the graph says and TensorRT 10 and 11 give the same engine.
Without --precision an fp32 graph is built as fp16 (the car's default) and fp16/int8 graphs as they are. Asking
for another precision than the graph's:

| asked | graph | TensorRT 10                                   | TensorRT 11 (no precision flags)               |
|-------|-------|-----------------------------------------------|------------------------------------------------|
| fp16  | fp32  | weakly typed + BuilderFlag.FP16               | graph converted to fp16 first (<engine>.fp16.onnx) |
| int8  | no Q/DQ | error: export a Q/DQ graph (calibrators are deprecated in 10.1, gone in 11) | same error       |
| fp32  | fp16/int8 | error: export an fp32 graph               | same error                                     |

After the build, the engine's layer report must show fp16 (or int8) kernels when they were asked for: an engine
that silently fell back to fp32 is an error, not a slow success. Everything before ``trt.Builder`` (ONNX checks,
profiles, the precision plan) runs without TensorRT and is what the CPU tests cover.

``--ort-provider tensorrt|cuda`` builds through ONNX Runtime's TensorRT/CUDA execution provider instead (engine
cache in the --engine folder), for users who deploy with onnxruntime-gpu.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from udaseg.export.onnx_utils import (
    ExportError,
    describe_io,
    get_metadata,
    graph_precision,
    input_spec,
    load_onnx,
    setup_logging,
)
from udaseg.export.profiles import Profile, resolve_profile

log = logging.getLogger("udaseg.export")

INSTALL_HINT = (
    "install TensorRT 10 or 11 for your CUDA version, e.g. pip install 'udaseg[trt]' (tensorrt-cu12 / tensorrt-cu13 "
    "wheels need an NVIDIA driver), or use the ONNX model with ONNX Runtime (python -m udaseg.infer --checkpoint "
    "model.onnx)"
)


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing; the message says which and what to install."""


class BuildError(RuntimeError):
    """TensorRT ran but could not build what was asked (parser errors, build failure, precision fallback)."""


def import_tensorrt():
    """``import tensorrt`` (lazily: TensorRT is an optional extra), checking the version is 10 or 11."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(f"TensorRT is not installed ({e}); {INSTALL_HINT}") from e
    major = trt_major(trt)
    if major < 10:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} found; udaseg builds with TensorRT 10 or 11")
    return trt


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def gpu_name() -> str:
    """Name of CUDA device 0, or raise TensorRTUnavailable when no GPU is visible."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
        if torch.version.cuda is not None:  # a CUDA build of torch that sees no device: there is none
            raise TensorRTUnavailable(
                "no CUDA GPU is visible (torch.cuda.is_available() is False): TensorRT engines are built on the GPU "
                "they run on; check nvidia-smi and CUDA_VISIBLE_DEVICES, or run the ONNX model with ONNX Runtime"
            )
    except ImportError:
        pass
    return "unknown (torch without CUDA; TensorRT will report a missing GPU itself)"


# ----------------------------------------------------------------------------- precision plan (no TensorRT needed)
@dataclass
class BuildPlan:
    precision: str  # what the engine computes in: fp32 | fp16 | int8
    graph_precision: str  # what the ONNX holds
    strongly_typed: bool  # network created STRONGLY_TYPED (always the case on TensorRT 11)
    builder_flags: list[str] = field(default_factory=list)  # BuilderFlag members to set (TensorRT 10 only)
    convert_to_fp16: bool = False  # TensorRT 11 + fp32 graph + fp16 asked: convert the ONNX first
    notes: list[str] = field(default_factory=list)


def plan_precision(requested: str | None, graph: str, major: int) -> BuildPlan:
    """How to build ``requested`` precision from a ``graph`` (fp32|fp16|int8) ONNX on TensorRT ``major``."""
    if major not in (10, 11):
        raise TensorRTUnavailable(f"TensorRT {major}.x is not supported; udaseg builds with TensorRT 10 or 11")
    notes = []
    if requested is None:  # the car's default is fp16; an fp16 or Q/DQ graph keeps its own precision
        requested = "fp16" if graph == "fp32" else graph
        notes.append(f"no precision asked: {requested} (pass --precision fp32 for an fp32 engine)")
    if requested not in ("fp32", "fp16", "int8"):
        raise ExportError(f"precision must be fp32, fp16 or int8, got {requested!r}")
    if requested == graph:
        return BuildPlan(requested, graph, strongly_typed=True, notes=[*notes, "precision from the ONNX graph"])
    if requested == "int8":
        raise ExportError(
            f"int8 needs a Q/DQ ONNX but this graph is {graph}: export one with export/to_onnx.py --precision int8 "
            "--calib NAME:ROOT (implicit calibration is deprecated since TensorRT 10.1 and removed in 11)"
        )
    if requested == "fp16" and graph == "fp32":
        if major == 10:
            return BuildPlan(
                "fp16",
                graph,
                strongly_typed=False,
                builder_flags=["FP16"],
                notes=[
                    *notes,
                    "TensorRT 10: weakly typed network with BuilderFlag.FP16 (per-layer choice); "
                    "export --precision fp16 for the same engine on TensorRT 10 and 11",
                ],
            )
        return BuildPlan(
            "fp16",
            graph,
            strongly_typed=True,
            convert_to_fp16=True,
            notes=[*notes, "TensorRT 11 has no FP16 flag: the fp32 graph is converted to fp16 first"],
        )
    raise ExportError(
        f"this ONNX graph is {graph}, so the engine would be {graph}, not {requested}: TensorRT takes precision from "
        f"the graph; export the model again with export/to_onnx.py --precision {requested}"
    )


def check_engine_precision(layer_info: str, precision: str) -> None:
    """Raise BuildError when an engine's layer report shows no kernel of the ``precision`` it was built for.

    ``layer_info``: ``IEngineInspector.get_engine_information(JSON)`` at DETAILED verbosity. TensorRT 10 writes
    ``"Format/Datatype": "... FP16 ..."`` / ``"Half"``, 11 a separate ``"DataType": "Half"``; both match here.
    """
    patterns = {"fp16": r"\b(half|fp16)\b", "int8": r"\bint8\b"}
    if precision in patterns and not re.search(patterns[precision], layer_info, flags=re.IGNORECASE):
        raise BuildError(
            f"the engine has no {precision} layer: TensorRT fell back to fp32 although {precision} was asked for. "
            "Check the GPU supports it and that the ONNX is the fp16/Q-DQ export (graph_precision in its metadata)"
        )


# ----------------------------------------------------------------------------- inspection before the builder
@dataclass
class OnnxInfo:
    path: Path
    io: list[dict]
    metadata: dict
    graph_precision: str
    profile: Profile


def inspect_onnx(
    path: str | os.PathLike, min_s: str | None = None, opt_s: str | None = None, max_s: str | None = None
) -> OnnxInfo:
    """Load and check the ONNX, log its I/O, and resolve the input profile (all before TensorRT is needed)."""
    model = load_onnx(path)
    io = describe_io(model)
    inp = input_spec(model)
    profile = resolve_profile(inp["name"], inp["shape"], min_s, opt_s, max_s)
    for t in io:
        log.info("%s %-7s %-8s %s", t["kind"], t["name"], t["dtype"], t["shape"])
    return OnnxInfo(Path(path), io, get_metadata(model), graph_precision(model), profile)


def _fp16_copy(onnx_info: OnnxInfo, engine: Path) -> Path:
    """TensorRT 11 + fp16 asked on an fp32 graph: convert it (range check on random images; prefer to_onnx)."""
    import numpy as np
    import onnx

    from udaseg.export.precision import convert_fp16

    shape = list(onnx_info.profile.opt)
    dtype = next(t["dtype"] for t in onnx_info.io if t["kind"] == "input")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape).astype(np.uint8)
    feed = {onnx_info.profile.name: x if dtype == "uint8" else x.astype(np.float32) / 255}
    out = engine.with_suffix(".fp16.onnx")
    onnx.save(convert_fp16(load_onnx(onnx_info.path), [feed]), str(out))
    log.warning(
        "converted %s to fp16 as %s (range-checked on random images only: for real images use "
        "export/to_onnx.py --precision fp16 --calib NAME:ROOT)",
        onnx_info.path,
        out,
    )
    return out


# ----------------------------------------------------------------------------- the builder (needs TensorRT + GPU)
def _parse(trt, builder, logger, onnx_path: Path, strongly_typed: bool, major: int):
    flags = 0
    if strongly_typed and major == 10:  # on 11 every network is strongly typed and the flag is deprecated
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: external data (> 2 GB) resolves beside it
        for i in range(parser.num_errors):
            error = describe_parser_error(parser.get_error(i))
            log.error("ONNX parser error %d/%d: %s", i + 1, parser.num_errors, error)
        raise BuildError(f"TensorRT could not parse {onnx_path} ({parser.num_errors} errors, logged above)")
    return network, parser


def describe_parser_error(err) -> str:
    """``node 12 (Resize 'node_resize'): <description>`` from a TensorRT ParserError."""

    def get(name: str, default: object = "?") -> object:
        fn = getattr(err, name, None)
        return fn() if callable(fn) else default

    return f"node {get('node')} ({get('node_operator')} {get('node_name')!r}): {get('desc', err)}"


def _config(trt, builder, plan: BuildPlan, profile: Profile, workspace_mb: int, cache_blob: bytes | None):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for check_engine_precision
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if not profile.is_static:
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(profile.name, profile.min, profile.opt, profile.max)
        config.add_optimization_profile(opt_profile)
    if cache_blob is not None:
        config.set_timing_cache(config.create_timing_cache(cache_blob), ignore_mismatch=False)
    return config


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    precision: str | None = None,
    min_shape: str | None = None,
    opt_shape: str | None = None,
    max_shape: str | None = None,
    workspace_mb: int = 4096,
    timing_cache: str | os.PathLike | None = None,
) -> dict:
    """Build ``engine_path`` from ``onnx_path``; writes ``<engine>.json`` metadata and returns it."""
    onnx_info = inspect_onnx(onnx_path, min_shape, opt_shape, max_shape)
    trt = import_tensorrt()
    major = trt_major(trt)
    plan = plan_precision(precision, onnx_info.graph_precision, major)
    gpu = gpu_name()
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    source = _fp16_copy(onnx_info, engine_path) if plan.convert_to_fp16 else onnx_info.path
    for note in plan.notes:
        log.info("precision %s: %s", plan.precision, note)

    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)  # fails (TypeError: nullptr) when CUDA cannot be initialised
    except (TypeError, RuntimeError) as e:
        raise TensorRTUnavailable(f"TensorRT could not create a builder: no usable CUDA GPU/driver ({e})") from e
    network, _parser = _parse(trt, builder, logger, source, plan.strongly_typed, major)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_blob = cache_path.read_bytes() if cache_path and cache_path.is_file() else (b"" if cache_path else None)
    config = _config(trt, builder, plan, onnx_info.profile, workspace_mb, cache_blob)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT failed to build an engine from {source} (see the TensorRT log above)")
    seconds = time.perf_counter() - start
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    layer_info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    check_engine_precision(layer_info, plan.precision)
    engine_path.write_bytes(bytes(serialized))
    if cache_path:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    meta = engine_metadata(trt, engine, plan, onnx_info, source, gpu, workspace_mb, seconds)
    Path(str(engine_path) + ".json").write_text(json.dumps(meta, indent=1))
    log.info(
        "wrote %s (%s, TensorRT %s, %s, built in %.0f s)", engine_path, plan.precision, trt.__version__, gpu, seconds
    )
    return meta


def engine_io(trt, engine) -> list[dict]:
    """Name, mode, dtype and shape of every I/O tensor of a deserialized engine (name-based API, TensorRT >= 10)."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        out.append(
            {
                "name": name,
                "kind": "input" if is_input else "output",
                "dtype": str(engine.get_tensor_dtype(name)).split(".")[-1].lower(),
                "shape": list(engine.get_tensor_shape(name)),
            }
        )
    return out


def engine_metadata(
    trt, engine, plan: BuildPlan, onnx_info: OnnxInfo, source: Path, gpu: str, workspace_mb: int, seconds: float
) -> dict:
    """What ``<engine>.json`` holds: shapes, precision, TensorRT version, GPU, and the ONNX's udaseg metadata."""
    from udaseg.export.to_onnx import file_sha256

    return {
        "onnx": str(onnx_info.path),
        "built_from": str(source),
        "onnx_sha256": file_sha256(source),
        "precision": plan.precision,
        "build_plan": asdict(plan),
        "tensorrt": trt.__version__,
        "gpu": gpu,
        "host": platform.node(),
        "profile": onnx_info.profile.as_dict(),
        "io": engine_io(trt, engine),
        "workspace_mb": workspace_mb,
        "build_seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "udaseg": onnx_info.metadata,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True, help="ONNX file from export/to_onnx.py")
    p.add_argument("--engine", required=True, help="engine file to write (a cache folder with --ort-provider)")
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8"],
        default=None,
        help="default: fp16 for an fp32 graph, else the graph's precision (see the module docstring)",
    )
    p.add_argument("--min", dest="min_shape", help="smallest input shape, e.g. 1x3x512x1024 (dynamic ONNX only)")
    p.add_argument("--opt", dest="opt_shape", help="shape TensorRT optimises for (dynamic ONNX only)")
    p.add_argument("--max", dest="max_shape", help="largest input shape (dynamic ONNX only)")
    p.add_argument("--workspace", type=int, default=4096, help="builder workspace limit in MiB")
    p.add_argument("--timing-cache", default=None, help="timing cache file, read if present and written back")
    p.add_argument(
        "--ort-provider",
        choices=["tensorrt", "cuda"],
        default=None,
        help="build/run through ONNX Runtime's execution provider instead of the TensorRT API",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.ort_provider:
            from udaseg.export.ort_providers import warm_up_session

            warm_up_session(
                args.onnx,
                args.ort_provider,
                args.engine,
                args.precision,
                args.min_shape,
                args.opt_shape,
                args.max_shape,
                args.workspace,
            )
        else:
            build_engine(
                args.onnx,
                args.engine,
                args.precision,
                args.min_shape,
                args.opt_shape,
                args.max_shape,
                args.workspace,
                args.timing_cache,
            )
    except (TensorRTUnavailable, BuildError, ExportError, RuntimeError) as e:
        log.error("to_trt: %s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
