"""The C++ TensorRT runner, its bindings and the example compile (not link) against both TensorRT API generations.

No TensorRT library or GPU is needed: CMake's UDASEG_TRT_COMPILE_ONLY target compiles the translation units that
include NvInfer.h (-O0, -Wall -Wextra -Werror, TensorRT/CUDA headers as SYSTEM includes) against

- the TensorRT headers of release 10.16 and 11.1 (Apache-2.0, NVIDIA's public repository): ``tensorrt-10.16/include``
  and ``tensorrt-11.1/include`` in the ``third_party`` folder that CI keeps beside the repository (THIRD_PARTY
  below), or the folders that UDASEG_TRT_HEADERS_10 / _11 name;
- the CUDA runtime headers of the ``nvidia-cuda-runtime-cu12`` and ``nvidia-cuda-nvcc-cu12`` wheels
  (``pip install 'udaseg[trt-check]'``), or the folders that UDASEG_CUDA_INCLUDE_DIRS lists (';'-separated).

Each piece that is missing skips its test with the reason. The runner's static_asserts tie udaseg::TensorType to
nvinfer1::DataType value for value, so a renumbered or unhandled type fails here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
THIRD_PARTY = REPO.parent / "shared" / "third_party"
HEADER_SETS = {"10": "tensorrt-10.16", "11": "tensorrt-11.1"}


def tensorrt_headers(major: str) -> Path:
    given = os.environ.get(f"UDASEG_TRT_HEADERS_{major}")
    folder = Path(given) if given else THIRD_PARTY / HEADER_SETS[major] / "include"
    if not (folder / "NvInfer.h").is_file():
        how = f"UDASEG_TRT_HEADERS_{major}" if given else f"{HEADER_SETS[major]}/include beside the repository"
        pytest.skip(f"TensorRT {major} headers not found ({folder}; set {how} to a folder holding NvInfer.h)")
    return folder


def cuda_headers() -> list[Path]:
    given = os.environ.get("UDASEG_CUDA_INCLUDE_DIRS")
    if given:
        folders = [Path(p) for p in given.split(";") if p]
    else:
        spec = importlib.util.find_spec("nvidia")
        roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
        folders = [r / sub for r in roots for sub in ("cuda_runtime/include", "cuda_nvcc/include")]
    runtime = [f for f in folders if (f / "cuda_runtime_api.h").is_file()]
    crt = [f for f in folders if (f / "crt" / "host_defines.h").is_file()]
    if not runtime or not crt:
        pytest.skip(
            "CUDA runtime headers not found (cuda_runtime_api.h and crt/host_defines.h): "
            "pip install nvidia-cuda-runtime-cu12 nvidia-cuda-nvcc-cu12, or set UDASEG_CUDA_INCLUDE_DIRS"
        )
    return [runtime[0], crt[0]]


def _toolchain() -> None:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler (c++, g++ or clang++) on PATH")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.parametrize("major", sorted(HEADER_SETS))
def test_runner_compiles_against_tensorrt_headers(major, tmp_path):
    _toolchain()
    trt_include, cuda = tensorrt_headers(major), cuda_headers()
    build = tmp_path / f"trt{major}"
    configure = [
        "cmake",
        "-S",
        str(REPO),
        "-B",
        str(build),
        "-DUDASEG_TRT_COMPILE_ONLY=ON",
        f"-DTENSORRT_INCLUDE_DIRS={trt_include}",
        f"-DUDASEG_CUDA_INCLUDE_DIRS={';'.join(map(str, cuda))}",
        f"-DPython_EXECUTABLE={sys.executable}",
    ]
    done = _run(configure)
    assert done.returncode == 0, f"configure failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert f"TensorRT compile check against {trt_include / 'NvInfer.h'}" in done.stdout
    done = _run(["cmake", "--build", str(build), "--target", "udaseg_trt_compile_check", "-j2"])
    assert done.returncode == 0, f"TensorRT {major} compile failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    objects = {p.name.split(".")[0] for p in build.rglob("*.o")}
    expected = {"trt_segmenter", "segment_image"} | ({"bindings"} if _pybind11() else set())
    assert expected <= objects, f"compiled {sorted(objects)}, expected {sorted(expected)}"


def _pybind11() -> bool:
    return importlib.util.find_spec("pybind11") is not None


def test_public_headers_need_no_tensorrt(tmp_path):
    """A perception node includes udaseg/trt_segmenter.hpp with neither TensorRT nor CUDA on its include path."""
    _toolchain()
    compiler = next(shutil.which(c) for c in ("c++", "g++", "clang++") if shutil.which(c))
    src = tmp_path / "user.cpp"
    src.write_text(
        '#include "udaseg/trt_segmenter.hpp"\n'
        "int main() { return sizeof(udaseg::TensorInfo) > 0 && udaseg::tensor_type_bits(udaseg::TensorType::kBF16)"
        " == 16 ? 0 : 1; }\n"
    )
    include = REPO / "export" / "runtime" / "include"
    done = _run([compiler, "-std=c++17", "-fsyntax-only", f"-I{include}", str(src)])
    assert done.returncode == 0, done.stderr[-3000:]
    header = (include / "udaseg" / "trt_segmenter.hpp").read_text()
    assert "#include <NvInfer" not in header and "#include <cuda" not in header
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "PUBLIC ${TENSORRT_INCLUDE_DIR}" not in cmake  # the include folder stays PRIVATE to the library
