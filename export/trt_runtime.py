"""Run a TensorRT engine from Python (TensorRT 10/11 name-based API), with torch CUDA tensors as device buffers.

Used by ``udaseg.infer`` and benchmarks/bench_infer.py for ``.engine`` files; the C++ twin is
export/runtime/src/trt_segmenter.cpp. Shapes are checked against the engine's profile before TensorRT sees them.
Every TensorRT data type is handled by name (TORCH_DTYPES): bf16 and fp8 outputs come back as float32 arrays,
the packed 4-bit types and unknown ones are a clear error. Type-checked with mypy against tensorrt-stubs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from udaseg.export.profiles import Profile, check_in_profile
from udaseg.export.to_trt import BuildError, TensorRTUnavailable, dims_list, import_tensorrt, trt_dtype_name

if TYPE_CHECKING:  # the tensorrt-stubs package (TensorRT 10 API) for mypy; at run time tensorrt is imported lazily
    import tensorrt as trt
    import torch

# Engine dtype name (to_trt.trt_dtype_name) -> torch dtype name for the device buffer. Not here: int4, float4_e2m1
# (packed two per byte: no torch tensor holds them) and float8_e8m0 (a scale type): never a segmentation output.
TORCH_DTYPES = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "int8": "int8",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "bool": "bool",
    "float8_e4m3": "float8_e4m3fn",
}


def torch_dtype(dtype_name: str, tensor: str) -> torch.dtype:
    """The torch dtype for an engine tensor of ``dtype_name``; BuildError for types the runner cannot hold."""
    import torch

    if dtype_name not in TORCH_DTYPES:
        raise BuildError(
            f"engine tensor {tensor!r} is {dtype_name}: the Python runner supports {', '.join(TORCH_DTYPES)} "
            "(packed 4-bit and scale types are internal to quantized layers, not outputs)"
        )
    return getattr(torch, TORCH_DTYPES[dtype_name])


class TrtRunner:
    """``runner(x) -> {output name: array}`` for a ``(B, 3, H, W)`` numpy input inside the engine's profile."""

    def __init__(self, engine_path: str | os.PathLike, device: int = 0) -> None:
        import torch

        trt_module = import_tensorrt()
        if not torch.cuda.is_available():
            raise TensorRTUnavailable("running a TensorRT engine from Python needs a CUDA GPU and torch with CUDA")
        self.torch, self.device = torch, torch.device("cuda", device)
        path = Path(engine_path)
        if not path.is_file():
            raise BuildError(f"{path}: no such engine file; build it with export/to_trt.py")
        meta_path = Path(str(path) + ".json")
        self.metadata: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self.logger, self.engine = self._load(trt_module, path)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt_module.TensorIOMode.INPUT for n in names}
        self.input = next(n for n in names if is_input[n])
        self.outputs = [n for n in names if not is_input[n]]
        self.dtypes = {n: trt_dtype_name(self.engine.get_tensor_dtype(n)) for n in names}
        self.profile = self._profile()
        self.input_dtype = self.dtypes[self.input]
        if self.input_dtype not in ("float32", "uint8"):
            raise BuildError(f"engine input {self.input!r} is {self.input_dtype}; udaseg graphs take float32 or uint8")
        self.out_dtypes = {n: torch_dtype(self.dtypes[n], n) for n in self.outputs}
        self.stream = torch.cuda.Stream(self.device)

    def _load(self, trt_module: Any, path: Path) -> tuple[trt.ILogger, trt.ICudaEngine]:
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            built = self.metadata.get("tensorrt", "unknown")
            raise BuildError(
                f"{path}: cannot deserialize (built with TensorRT {built} on {self.metadata.get('gpu')}; "
                f"this is TensorRT {trt_module.__version__}): rebuild it on this machine"
            )
        return logger, engine

    def _profile(self) -> Profile:
        shape = tuple(dims_list(self.engine.get_tensor_shape(self.input)))
        if min(shape) >= 0:  # static input: its shape is the whole profile
            return Profile(self.input, shape, shape, shape)
        lo, opt, hi = (tuple(dims_list(d)) for d in self.engine.get_tensor_profile_shape(self.input, 0))
        return Profile(self.input, lo, opt, hi)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        check_in_profile(tuple(x.shape), self.profile)
        self.context.set_input_shape(self.input, tuple(x.shape))
        inp = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        self.context.set_tensor_address(self.input, inp.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(dims_list(self.context.get_tensor_shape(name)))
            outs[name] = torch.empty(shape, dtype=self.out_dtypes[name], device=self.device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the input copy ran on the default stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BuildError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        self.stream.synchronize()
        # numpy has no bfloat16/float8: those come back as float32 (exact for both)
        return {
            n: (t.float() if t.dtype in (torch.bfloat16, torch.float8_e4m3fn) else t).cpu().numpy()
            for n, t in outs.items()
        }
