"""Run a TensorRT engine from Python (TensorRT 10/11 name-based API), with torch CUDA tensors as device buffers.

Used by ``udaseg.infer`` and benchmarks/bench_infer.py for ``.engine`` files; the C++ twin is
export/runtime/src/trt_segmenter.cpp. Shapes are checked against the engine's profile before TensorRT sees them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from udaseg.export.profiles import Profile, check_in_profile
from udaseg.export.to_trt import BuildError, TensorRTUnavailable, import_tensorrt


class TrtRunner:
    """``runner(x) -> {output name: array}`` for a ``(B, 3, H, W)`` numpy input inside the engine's profile."""

    def __init__(self, engine_path: str | os.PathLike, device: int = 0) -> None:
        import torch

        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise TensorRTUnavailable("running a TensorRT engine from Python needs a CUDA GPU and torch with CUDA")
        self.trt, self.torch, self.device = trt, torch, torch.device("cuda", device)
        path = Path(engine_path)
        if not path.is_file():
            raise BuildError(f"{path}: no such engine file; build it with export/to_trt.py")
        meta_path = Path(str(path) + ".json")
        self.metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            built = self.metadata.get("tensorrt", "unknown")
            raise BuildError(
                f"{path}: cannot deserialize (built with TensorRT {built} on {self.metadata.get('gpu')}; "
                f"this is TensorRT {trt.__version__}): rebuild it on this machine"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input = next(n for n in names if is_input[n])
        self.outputs = [n for n in names if not is_input[n]]
        shape = tuple(self.engine.get_tensor_shape(self.input))
        if min(shape) >= 0:  # static input: its shape is the whole profile
            self.profile = Profile(self.input, shape, shape, shape)
        else:
            lo, opt, hi = self.engine.get_tensor_profile_shape(self.input, 0)
            self.profile = Profile(self.input, tuple(lo), tuple(opt), tuple(hi))
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input))).name
        self.stream = torch.cuda.Stream(self.device)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        torch, trt = self.torch, self.trt
        check_in_profile(tuple(x.shape), self.profile)
        self.context.set_input_shape(self.input, tuple(x.shape))
        inp = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        self.context.set_tensor_address(self.input, inp.data_ptr())
        outs = {}
        for name in self.outputs:
            dtype = torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            outs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the input copy ran on the default stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BuildError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        self.stream.synchronize()
        return {name: t.cpu().numpy() for name, t in outs.items()}
