"""Stage 3: ONNX -> TensorRT engine, for TensorRT 10 and 11, with its metadata written beside it.

    python export/to_trt.py --onnx model_fp16.onnx --engine model_fp16.engine
    python -m udaseg.export.to_trt --onnx model.onnx --engine model.engine --precision fp16 \\
        --min 1x3x512x1024 --opt 1x3x1024x2048 --max 1x3x1024x2048 --workspace 4096 --timing-cache trt.cache
    python -m udaseg.export.to_trt --onnx model.onnx --check            # parser report for TensorRT 10 and 11 only
    python -m udaseg.export.to_trt --onnx model_fp16.onnx --engine trt_cache/ --ort-provider tensorrt

Before the builder, without TensorRT: the ONNX is checked (onnx.checker), its input profile resolved, the graph
simplified with onnxslim where that removes nodes and gives the same results on ONNX Runtime (kept as
``<engine stem>.slim.onnx``), and export/trt_compat.py reports what the ONNX parser of the target TensorRT will not
take (operators, types, uint8 inside the graph, int64/float64 tensors, dynamic dims without a profile). With
TensorRT installed a blocking problem stops the build here (``--skip-parser-check`` tries anyway).

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
that silently fell back to fp32 is an error, not a slow success. ``<engine>.json`` holds the build facts and a
``runtime`` block (export/profiles.py runtime_spec) that the C++ runtime reads: input name/dtype/layout,
normalisation, output names, class names, palette, protocol.

Type-checked with mypy against the tensorrt-stubs package (TensorRT 10 API; tests/export/test_trt_typecheck.py).
Code paths that only TensorRT 11 takes are marked "TensorRT 11".

``--ort-provider tensorrt|cuda`` builds through ONNX Runtime's TensorRT/CUDA execution provider instead (engine
cache in the --engine folder), for users who deploy with onnxruntime-gpu.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from udaseg.cli import run_cli
from udaseg.export.onnx_utils import (
    ExportError,
    save_onnx,
    setup_logging,
)
from udaseg.export.profiles import Profile, runtime_spec
from udaseg.export.trt_compat import OnnxInfo, inspect_onnx, installed_or_all, parser_check, simplify_graph
from udaseg.fileio import UserError, write_bytes, write_json

if TYPE_CHECKING:  # the tensorrt-stubs package (TensorRT 10 API) for mypy; at run time tensorrt is imported lazily
    import tensorrt as trt

log = logging.getLogger("udaseg.export")

INSTALL_HINT = (
    "install TensorRT 10 or 11 for your CUDA version, e.g. pip install 'udaseg[trt]' (tensorrt-cu12 / tensorrt-cu13 "
    "wheels need an NVIDIA driver), or use the ONNX model with ONNX Runtime (python -m udaseg.infer --checkpoint "
    "model.onnx)"
)

# TensorRT DataType member -> the dtype names of describe_io and of the C++ runtime (tensor_types.hpp).
TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "BOOL": "bool",
    "FP8": "float8_e4m3",
    "INT4": "int4",
    "FP4": "float4_e2m1",
    "E8M0": "float8_e8m0",
}


class TensorRTUnavailable(UserError, RuntimeError):
    """TensorRT or a CUDA GPU is missing; the message says which and what to install."""


class BuildError(UserError, RuntimeError):
    """TensorRT ran but could not build what was asked (parser errors, build failure, precision fallback)."""


def import_tensorrt() -> Any:
    """``import tensorrt`` (lazily: TensorRT is an optional extra), checking the version is 10 or 11."""
    try:
        import tensorrt
    except ImportError as e:
        raise TensorRTUnavailable(f"TensorRT is not installed ({e}); {INSTALL_HINT}") from e
    if getattr(tensorrt, "__version__", None) is None:  # a namespace package: tensorrt-stubs without TensorRT
        raise TensorRTUnavailable(f"only the 'tensorrt' type stubs are installed, not TensorRT; {INSTALL_HINT}")
    if trt_major(tensorrt) < 10:
        raise TensorRTUnavailable(f"TensorRT {tensorrt.__version__} found; udaseg builds with TensorRT 10 or 11")
    return tensorrt


def trt_major(module: Any) -> int:
    return int(str(module.__version__).split(".")[0])


def trt_dtype_name(dtype: object) -> str:
    """``trt.DataType.HALF`` -> ``"float16"`` (the names of describe_io and of the C++ runtime)."""
    member = str(dtype).split(".")[-1]
    return TRT_DTYPES.get(member, member.lower())


def dims_list(dims: trt.Dims) -> list[int]:
    """A TensorRT Dims as a list (Dims has __len__/__getitem__ but no __iter__ in the stubs)."""
    return [int(dims[i]) for i in range(len(dims))]


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


def _fp16_copy(onnx_info: OnnxInfo, engine: Path) -> Path:
    """TensorRT 11 + fp16 asked on an fp32 graph: convert it (range check on random images; prefer to_onnx)."""
    from udaseg.export.precision import convert_fp16
    from udaseg.export.simplify import sample_feeds

    feeds = sample_feeds(onnx_info.model, onnx_info.example_shape, count=1)
    out = save_onnx(convert_fp16(onnx_info.model, feeds), engine.with_suffix(".fp16.onnx"))
    log.warning(
        "converted %s to fp16 as %s (range-checked on random images only: for real images use "
        "export/to_onnx.py --precision fp16 --calib NAME:ROOT)",
        onnx_info.path,
        out,
    )
    return out


# ----------------------------------------------------------------------------- the builder (needs TensorRT + GPU)
def _parse(
    builder: trt.Builder, logger: trt.ILogger, onnx_path: Path, strongly_typed: bool, major: int
) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    import tensorrt as trt

    flags = 0
    # TensorRT 10: strong typing is opted into. TensorRT 11: every network is strongly typed and the flag is
    # accepted but ignored, so 0 there.
    if strongly_typed and major == 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: external data (> 2 GB) resolves beside it
        for i in range(parser.num_errors):
            error = describe_parser_error(parser.get_error(i))
            log.error("ONNX parser error %d/%d: %s", i + 1, parser.num_errors, error)
        raise BuildError(f"TensorRT could not parse {onnx_path} ({parser.num_errors} errors, logged above)")
    return network, parser


def describe_parser_error(err: object) -> str:
    """``node 12 (Resize 'node_resize'): <description>`` from a TensorRT ParserError."""

    def get(name: str, default: object = "?") -> object:
        fn = getattr(err, name, None)
        return fn() if callable(fn) else default

    return f"node {get('node')} ({get('node_operator')} {get('node_name')!r}): {get('desc', err)}"


def _config(
    builder: trt.Builder, plan: BuildPlan, profile: Profile, workspace_mb: int, cache_blob: bytes | None
) -> trt.IBuilderConfig:
    import tensorrt as trt

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for check_engine_precision
    for flag in plan.builder_flags:  # TensorRT 10 only: plan_precision never asks for a flag on 11 (all removed)
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if not profile.is_static:
        opt_profile = builder.create_optimization_profile()
        lo, opt, hi = (trt.Dims(list(shape)) for shape in (profile.min, profile.opt, profile.max))
        opt_profile.set_shape(profile.name, lo, opt, hi)
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
    simplify: bool = True,
    parser_check_strict: bool = True,
) -> dict:
    """Build ``engine_path`` from ``onnx_path``; writes ``<engine>.json`` metadata and returns it."""
    onnx_info = inspect_onnx(onnx_path, min_shape, opt_shape, max_shape)  # raises for dynamic dims without --opt
    if simplify:
        simplify_graph(onnx_info)
    reports = parser_check(onnx_info, installed_or_all())
    trt = import_tensorrt()
    major = trt_major(trt)
    report = reports.get(major)
    if report is not None and not report.ok and parser_check_strict:
        raise BuildError(
            f"the ONNX parser of TensorRT {major} will not take {onnx_info.path}: {'; '.join(report.errors)} "
            "(--skip-parser-check builds anyway)"
        )
    plan = plan_precision(precision, onnx_info.graph_precision, major)
    gpu = gpu_name()
    engine_path = Path(engine_path)
    source = onnx_info.path
    if onnx_info.simplified.get("applied"):
        source = save_onnx(onnx_info.model, engine_path.with_suffix(".slim.onnx"))
    if plan.convert_to_fp16:  # TensorRT 11
        source = _fp16_copy(onnx_info, engine_path)
    for note in plan.notes:
        log.info("precision %s: %s", plan.precision, note)
    return _build(onnx_info, plan, source, engine_path, gpu, workspace_mb, timing_cache)


def _build(
    onnx_info: OnnxInfo,
    plan: BuildPlan,
    source: Path,
    engine_path: Path,
    gpu: str,
    workspace_mb: int,
    timing_cache: str | os.PathLike | None,
) -> dict:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)  # fails (TypeError: nullptr) when CUDA cannot be initialised
    except (TypeError, RuntimeError) as e:
        raise TensorRTUnavailable(f"TensorRT could not create a builder: no usable CUDA GPU/driver ({e})") from e
    network, _parser = _parse(builder, logger, source, plan.strongly_typed, trt_major(trt))
    cache_path = Path(timing_cache) if timing_cache else None
    cache_blob = cache_path.read_bytes() if cache_path and cache_path.is_file() else (b"" if cache_path else None)
    assert onnx_info.profile is not None  # inspect_onnx(require_profile=True)
    config = _config(builder, plan, onnx_info.profile, workspace_mb, cache_blob)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT failed to build an engine from {source} (see the TensorRT log above)")
    seconds = time.perf_counter() - start
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    layer_info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    check_engine_precision(layer_info, plan.precision)
    write_bytes(engine_path, bytes(serialized))
    if cache_path:
        write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    meta = engine_metadata(engine, plan, onnx_info, source, gpu, workspace_mb, seconds)
    write_json(str(engine_path) + ".json", meta, indent=1)
    log.info(
        "wrote %s (%s, TensorRT %s, %s, built in %.0f s)", engine_path, plan.precision, trt.__version__, gpu, seconds
    )
    return meta


def engine_io(engine: trt.ICudaEngine) -> list[dict]:
    """Name, mode, dtype and shape of every I/O tensor of a deserialized engine (name-based API, TensorRT >= 10)."""
    import tensorrt as trt

    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        out.append(
            {
                "name": name,
                "kind": "input" if is_input else "output",
                "dtype": trt_dtype_name(engine.get_tensor_dtype(name)),
                "shape": dims_list(engine.get_tensor_shape(name)),
            }
        )
    return out


def engine_metadata(
    engine: trt.ICudaEngine,
    plan: BuildPlan,
    onnx_info: OnnxInfo,
    source: Path,
    gpu: str,
    workspace_mb: int,
    seconds: float,
) -> dict:
    """What ``<engine>.json`` holds: build facts, the ONNX's udaseg metadata, and the C++ runtime block."""
    import tensorrt as trt

    from udaseg.export.to_onnx import file_sha256

    io = engine_io(engine)
    if [t["name"] for t in io] != [t["name"] for t in onnx_info.io]:
        log.warning("engine I/O %s differs from the ONNX's %s", io, onnx_info.io)
    return {
        "onnx": str(onnx_info.path),
        "built_from": str(source),
        "onnx_sha256": file_sha256(source),
        "precision": plan.precision,
        "build_plan": asdict(plan),
        "simplified": onnx_info.simplified,
        "tensorrt": trt.__version__,
        "gpu": gpu,
        "host": platform.node(),
        "profile": onnx_info.profile.as_dict() if onnx_info.profile else None,
        "io": io,
        "workspace_mb": workspace_mb,
        "build_seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runtime": runtime_spec(io, onnx_info.metadata, onnx_info.profile, plan.precision),
        "udaseg": onnx_info.metadata,
    }


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--onnx", required=True, help="ONNX file from export/to_onnx.py")
    p.add_argument("--engine", help="engine file to write (a cache folder with --ort-provider)")
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
    p.add_argument("--check", action="store_true", help="only report what the ONNX parser will not take; no build")
    p.add_argument("--trt-version", type=int, choices=[10, 11], help="TensorRT major to check for (default: both)")
    p.add_argument("--no-simplify", action="store_true", help="build the graph as exported (no onnxslim)")
    p.add_argument("--skip-parser-check", action="store_true", help="build even when the parser report has errors")
    p.add_argument(
        "--ort-provider",
        choices=["tensorrt", "cuda"],
        default=None,
        help="build/run through ONNX Runtime's execution provider instead of the TensorRT API",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.check and not args.engine:
        p.error("--engine is required (or --check for the parser report alone)")
    return args


def check_only(args: argparse.Namespace) -> int:
    """``--check``: the parser report for TensorRT 10 and 11 (or --trt-version); exit code 1 when one has errors."""
    info = inspect_onnx(args.onnx, args.min_shape, args.opt_shape, args.max_shape, require_profile=False)
    if not args.no_simplify:
        simplify_graph(info)
    reports = parser_check(info, [args.trt_version] if args.trt_version else [10, 11], quiet=True)  # printed below
    for report in reports.values():
        print(report.format())
    return 0 if all(r.ok for r in reports.values()) else 1


def main(argv: list[str] | None = None) -> int:
    """``udaseg-export-trt``: 0 on success, 1 for a --check with parser errors, 2 for a user or build error."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    if args.check:
        return check_only(args)
    if args.ort_provider:
        from udaseg.export.ort_providers import warm_up_session

        shapes = (args.min_shape, args.opt_shape, args.max_shape)
        warm_up_session(args.onnx, args.ort_provider, args.engine, args.precision, *shapes, args.workspace)
        return 0
    build_engine(
        args.onnx,
        args.engine,
        args.precision,
        args.min_shape,
        args.opt_shape,
        args.max_shape,
        args.workspace,
        args.timing_cache,
        simplify=not args.no_simplify,
        parser_check_strict=not args.skip_parser_check,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
