"""ONNX Runtime on the GPU: the TensorRT and CUDA execution providers, for users who deploy with onnxruntime-gpu.

    python -m udaseg.export.to_trt --onnx model_fp16.onnx --engine trt_cache/ --ort-provider tensorrt
    python -m udaseg.infer --checkpoint model_fp16.onnx --provider tensorrt --input frames/ --output out/

The TensorRT provider builds its engine on first use and caches it (and its timing cache) in a folder; the same
precision rules as export/to_trt.py apply: precision comes from the graph (an fp32 graph may be built in fp16 by
``trt_fp16_enable`` where the TensorRT underneath still has weak typing), int8 needs a Q/DQ graph. A session that
silently fell back to the CPU provider is an error here, not a slow success.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from udaseg.export.onnx_utils import ExportError, get_metadata, graph_precision, input_spec, load_onnx
from udaseg.export.profiles import Profile, resolve_profile
from udaseg.fileio import UserError

log = logging.getLogger("udaseg.export")

EP_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


class ProviderUnavailable(UserError, RuntimeError):
    """The asked-for ONNX Runtime execution provider is not installed or could not start."""


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def provider_options(
    provider: str,
    graph: str,
    precision: str | None = None,
    cache_dir: str | os.PathLike = ".",
    profile: Profile | None = None,
    workspace_mb: int = 4096,
    device_id: int = 0,
) -> list:
    """The ``providers`` list for ``onnxruntime.InferenceSession`` (no onnxruntime import: testable anywhere).

    ``graph``: the ONNX's precision (fp32|fp16|int8); ``precision``: what the engine should compute in (default
    the graph's). TensorRT provider options: engine and timing caches in ``cache_dir``, workspace, profile shapes.
    """
    if provider not in EP_NAMES:
        raise ExportError(f"provider must be one of {sorted(EP_NAMES)}, got {provider!r}")
    precision = precision or graph
    if precision != graph and not (precision == "fp16" and graph == "fp32"):
        raise ExportError(
            f"the ONNX graph is {graph}; ONNX Runtime cannot run it as {precision}: export the model with "
            f"export/to_onnx.py --precision {precision}"
        )
    cuda = (EP_NAMES["cuda"], {"device_id": device_id})
    if provider == "cpu":
        return [EP_NAMES["cpu"]]
    if provider == "cuda":
        if precision != graph:
            raise ExportError("the CUDA provider runs the graph as it is: export with --precision fp16 for fp16")
        return [cuda, EP_NAMES["cpu"]]
    cache = str(Path(cache_dir))
    opts: dict = {
        "device_id": device_id,
        "trt_max_workspace_size": workspace_mb << 20,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
    }
    if precision == "fp16" and graph == "fp32":
        opts["trt_fp16_enable"] = True
    if graph == "int8":
        opts["trt_int8_enable"] = True  # explicit Q/DQ: no calibration table is read
    if profile is not None and not profile.is_static:
        for key, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
            opts[f"trt_profile_{key}_shapes"] = f"{profile.name}:{_dims(shape)}"
    return [(EP_NAMES["tensorrt"], opts), cuda, EP_NAMES["cpu"]]


def make_session(
    onnx_path: str | os.PathLike,
    provider: str = "tensorrt",
    cache_dir: str | os.PathLike = ".",
    precision: str | None = None,
    profile: Profile | None = None,
    workspace_mb: int = 4096,
):
    """An InferenceSession on ``provider``; raises ProviderUnavailable instead of falling back to the CPU."""
    import onnxruntime as ort

    model = load_onnx(onnx_path)
    wanted = EP_NAMES[provider] if provider in EP_NAMES else provider
    available = ort.get_available_providers()
    if wanted not in available:
        raise ProviderUnavailable(
            f"onnxruntime {ort.__version__} has no {wanted} (available: {', '.join(available)}): install "
            "onnxruntime-gpu with CUDA (and TensorRT libraries on LD_LIBRARY_PATH for the TensorRT provider), "
            "or use provider 'cpu'"
        )
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    providers = provider_options(provider, graph_precision(model), precision, cache_dir, profile, workspace_mb)
    session = ort.InferenceSession(str(onnx_path), providers=providers)
    if session.get_providers()[0] != wanted:
        raise ProviderUnavailable(
            f"{wanted} failed to start (session runs on {session.get_providers()}); "
            "see onnxruntime's log for the missing library"
        )
    log.info("%s on %s (%s)", onnx_path, wanted, get_metadata(model).get("precision", graph_precision(model)))
    return session


def warm_up_session(
    onnx_path: str | os.PathLike,
    provider: str,
    cache_dir: str | os.PathLike,
    precision: str | None = None,
    min_s: str | None = None,
    opt_s: str | None = None,
    max_s: str | None = None,
    workspace_mb: int = 4096,
) -> float:
    """Create the session and run it once at the opt shape, so TensorRT's engine lands in ``cache_dir``."""
    inp = input_spec(load_onnx(onnx_path))
    profile = resolve_profile(inp["name"], inp["shape"], min_s, opt_s, max_s)
    start = time.perf_counter()
    session = make_session(onnx_path, provider, cache_dir, precision, profile, workspace_mb)
    x = np.zeros(profile.opt, dtype=np.uint8 if inp["dtype"] == "uint8" else np.float32)
    session.run(None, {inp["name"]: x})
    seconds = time.perf_counter() - start
    log.info("%s: %s session ready in %.1f s; engine cache in %s", onnx_path, provider, seconds, cache_dir)
    return seconds
