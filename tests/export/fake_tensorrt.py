"""A stand-in ``tensorrt`` module that records what export/to_trt.py asks of the builder.

It mirrors the parts of the TensorRT 10 and 11 Python API that to_trt.py uses, including what 11 removed
(BuilderFlag.FP16/INT8): calling a removed member fails here as it would there. No engine is built; the
"serialized engine" is a few bytes and the layer report is whatever the test passes in.
"""

from __future__ import annotations

import types
from types import SimpleNamespace


class _ParserError:
    def __init__(self, i: int) -> None:
        self.i = i

    def node(self) -> int:
        return 10 + self.i

    def node_operator(self) -> str:
        return "Resize"

    def node_name(self) -> str:
        return f"node_resize_{self.i}"

    def desc(self) -> str:
        return f"unsupported mode {self.i}"


def make_fake_tensorrt(version: str, layer_info: str = '{"Layers": []}', parse_errors: int = 0) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls = []
    major = int(version.split(".")[0])
    flags = {"TF32": 6, "DEBUG": 0} | ({"FP16": 0, "INT8": 1} if major == 10 else {})  # 11 removed FP16/INT8
    trt.BuilderFlag = SimpleNamespace(**flags)
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE=0)
    trt.ProfilingVerbosity = SimpleNamespace(DETAILED=2)
    trt.LayerInformationFormat = SimpleNamespace(JSON=1)
    trt.TensorIOMode = SimpleNamespace(INPUT=1, OUTPUT=2)
    trt.Dims = lambda shape=(): list(shape)  # the real Dims is a sequence of ints too (len, [i])

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.num_errors = parse_errors

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", path))
            return parse_errors == 0

        def get_error(self, i: int) -> _ParserError:
            return _ParserError(i)

    class TimingCache:
        def serialize(self) -> bytes:
            return b"timing-cache"

    class Config:
        def set_memory_pool_limit(self, pool, size) -> None:
            calls.append(("workspace", size))

        def set_flag(self, flag) -> None:
            calls.append(("set_flag", flag))

        def add_optimization_profile(self, profile) -> None:
            calls.append(("profile", profile.shapes))

        def create_timing_cache(self, blob: bytes) -> TimingCache:
            calls.append(("timing_cache", bytes(blob)))
            return TimingCache()

        def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
            return True

        def get_timing_cache(self) -> TimingCache:
            return TimingCache()

    class OptimizationProfile:
        def set_shape(self, name, lo, opt, hi) -> None:
            self.shapes = (name, tuple(lo), tuple(opt), tuple(hi))

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags: int) -> object:
            calls.append(("create_network", flags))
            return object()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network, config) -> bytes:
            calls.append(("build", config.profiling_verbosity))
            return b"serialized-engine"

    class Engine:  # the I/O of the export's 64x128 "both" graph
        num_io_tensors = 3

        def get_tensor_name(self, i: int) -> str:
            return ["input", "labels", "logits"][i]

        def get_tensor_mode(self, name: str) -> int:
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> str:
            return "DataType.INT32" if name == "labels" else "DataType.FLOAT"

        def get_tensor_shape(self, name: str) -> list[int]:
            return {"input": [1, 3, 64, 128], "labels": [1, 64, 128], "logits": [1, 19, 64, 128]}[name]

        def create_engine_inspector(self) -> SimpleNamespace:
            return SimpleNamespace(get_engine_information=lambda fmt: layer_info)

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, blob: bytes) -> Engine:
            return Engine()

    trt.Logger, trt.OnnxParser, trt.Builder, trt.Runtime = Logger, OnnxParser, Builder, Runtime
    return trt
