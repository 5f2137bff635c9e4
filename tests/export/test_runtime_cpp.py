"""The C++ runtime (export/runtime) against export/prepost.py: bit-identical pre/post-processing.

Two builds are checked: the extension ``udaseg._runtime`` that setup.py builds at install time (skipped when the
install had no compiler), and a fresh CMake build of the top-level CMakeLists.txt (library, bindings, example),
which is what a perception stack links.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from udaseg.data.labels import PALETTE
from udaseg.export import prepost

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cmake_build(tmp_path_factory) -> Path:
    """Configure and build CMakeLists.txt (Release, -j2) once; returns the build folder."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    build = tmp_path_factory.mktemp("cmake-build")
    configure = [
        "cmake",
        "-S",
        str(REPO),
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython_EXECUTABLE={sys.executable}",
    ]
    for cmd in (configure, ["cmake", "--build", str(build), "-j2"]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return build


def _load_cmake_module(build: Path):
    path = next(build.glob("_runtime*.so"), None) or next(build.glob("_runtime*.pyd"), None)
    assert path is not None, f"CMake built no _runtime module in {build} (pybind11 not found by CMake?)"
    spec = importlib.util.spec_from_file_location("_runtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", params=["setup.py", "cmake"])
def rt(request):
    """The bindings module, from the installed extension or from the CMake build."""
    if request.param == "setup.py":
        try:
            import udaseg._runtime as module
        except ImportError:
            pytest.skip("udaseg._runtime is not built (pip install -e . or python setup.py build_ext --inplace)")
        return module
    return _load_cmake_module(request.getfixturevalue("cmake_build"))


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, f"{a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    differ = a.view(np.uint8) != b.view(np.uint8) if a.dtype != np.float32 else a.view(np.uint32) != b.view(np.uint32)
    assert not differ.any(), f"{int(differ.sum())} of {differ.size} values differ"


IMAGE_SIZES = [
    (64, 128, 32, 64),
    (37, 53, 64, 128),
    (7, 5, 7, 5),
    (1, 1, 3, 4),
    (97, 131, 13, 17),
    (480, 640, 512, 1024),
]


@pytest.mark.parametrize("in_h, in_w, out_h, out_w", IMAGE_SIZES)
def test_preprocess_bit_identical(rt, in_h, in_w, out_h, out_w):
    img = np.random.default_rng(in_h * in_w).integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
    _same_bits(rt.preprocess(img, out_h, out_w), prepost.preprocess(img, out_h, out_w))
    _same_bits(rt.preprocess_u8(img, out_h, out_w), prepost.preprocess_u8(img, out_h, out_w))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    _same_bits(rt.preprocess(img, out_h, out_w, mean, std), prepost.preprocess(img, out_h, out_w, mean, std))


def test_preprocess_padded_rows(rt):
    """A crop of a larger frame: rows longer than width * 3 bytes (the row_stride path of the C++ API)."""
    frame = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    crop = frame[5:35, 10:60]  # non-contiguous view, packed pixels
    _same_bits(rt.preprocess(crop, 24, 48), prepost.preprocess(np.ascontiguousarray(crop), 24, 48))


@pytest.mark.parametrize("shape", [(19, 61, 67), (1, 1, 1), (2, 3, 5), (19, 512, 1024)])
def test_postprocess_bit_identical(rt, shape):
    logits = np.random.default_rng(sum(shape)).normal(0, 6, shape).astype(np.float32)
    logits[:, 0, 0] = 1.5  # ties
    if shape[0] > 1:
        logits[1, -1, -1] = np.nan  # NaN never beats channel 0, on both sides
    _same_bits(rt.argmax(logits), prepost.argmax(logits))
    _same_bits(rt.argmax(logits, "int32"), prepost.argmax(logits, np.int32))
    _same_bits(rt.confidence(logits), prepost.confidence(logits))
    labels = prepost.argmax(logits)
    _same_bits(rt.colorize(labels, rt.cityscapes_palette()), prepost.colorize(labels))


def test_exp_bit_identical(rt):
    x = -np.abs(np.random.default_rng(5).normal(0, 30, 200_000)).astype(np.float32)
    x[:4] = [0.0, -87.0, -1e-9, -np.inf]
    _same_bits(rt.exp_neg(x), prepost.exp_neg(x))


@pytest.mark.parametrize("h, w, oh, ow", [(33, 45, 66, 90), (33, 45, 17, 23), (1, 1, 4, 3), (512, 1024, 1024, 2048)])
def test_resize_nearest_bit_identical(rt, h, w, oh, ow):
    labels = np.random.default_rng(h + w).integers(0, 256, (h, w), dtype=np.uint8)
    _same_bits(rt.resize_nearest(labels, oh, ow), prepost.resize_nearest(labels, oh, ow))


def test_palette_and_ignore(rt):
    assert np.array_equal(rt.cityscapes_palette(), np.asarray(PALETTE, dtype=np.uint8))
    labels = np.array([[255, 19, 0]], dtype=np.uint8)
    assert rt.colorize(labels, rt.cityscapes_palette()).tolist() == [[[0, 0, 0], [0, 0, 0], list(PALETTE[0])]]


def test_bad_inputs_raise(rt):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        rt.preprocess(np.zeros((4, 4), np.uint8), 2, 2)
    with pytest.raises(ValueError, match="positive"):
        rt.preprocess(np.zeros((4, 4, 3), np.uint8), 0, 2)
    with pytest.raises(ValueError, match="num_classes"):
        rt.argmax(np.zeros((300, 2, 2), np.float32))


def test_pnm_round_trip_with_pillow(rt, tmp_path):
    from PIL import Image

    img = np.random.default_rng(6).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.ppm")
    assert np.array_equal(rt.read_pnm(str(tmp_path / "a.ppm")), img)
    mask = img[..., 0].copy()
    rt.write_pnm(str(tmp_path / "m.pgm"), mask)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "m.pgm")), mask)
    (tmp_path / "bad.ppm").write_bytes(b"P6\n4 4\n255\n" + bytes(10))
    with pytest.raises(RuntimeError, match="truncated"):
        rt.read_pnm(str(tmp_path / "bad.ppm"))


@pytest.mark.slow
def test_example_program_without_tensorrt(cmake_build, tmp_path):
    """segment_image builds everywhere; without TensorRT it reads the image and says what is missing."""
    from PIL import Image

    exe = cmake_build / "segment_image"
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(tmp_path / "frame.ppm")
    done = subprocess.run(
        [str(exe), "model.engine", str(tmp_path / "frame.ppm"), str(tmp_path / "out")], capture_output=True, text=True
    )
    if "UDASEG_WITH_TENSORRT" in (cmake_build / "CMakeCache.txt").read_text():  # pragma: no cover - GPU hosts
        pytest.skip("built with TensorRT: the example needs a real engine")
    assert done.returncode == 3 and "no TensorRT runner" in done.stderr and "16x8" in done.stderr
    done = subprocess.run([str(exe), "m.engine", str(tmp_path / "missing.ppm"), "o"], capture_output=True, text=True)
    assert done.returncode == 1 and "cannot open" in done.stderr
