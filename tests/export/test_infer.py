"""udaseg.infer: the same pre/post-processing for .pt, .onnx and .engine; PNG outputs; a bad image skipped and
reported; distinct output names; clear errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from export_testdata import SIZE
from PIL import Image

from udaseg.data.labels import PALETTE
from udaseg.export.onnx_utils import ExportError
from udaseg.infer import InferError, list_images, load_backend, load_prepost, main, segment


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Two camera frames of another size than the graphs (the resize to the network and back is exercised)."""
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_onnx_and_checkpoint_agree_at_the_same_network_size(checkpoint, fp32_onnx, frames):
    image = np.asarray(Image.open(frames / "f0.png"))
    pt = segment(load_backend(checkpoint), image, size=SIZE, with_confidence=True)
    ox = segment(load_backend(fp32_onnx), image, with_confidence=True)  # static graph: SIZE from the graph
    assert pt["labels"].shape == image.shape[:2] and pt["color"].shape == (*image.shape[:2], 3)
    assert (pt["labels"] == ox["labels"]).mean() >= 0.999
    assert np.abs(pt["confidence"].astype(int) - ox["confidence"].astype(int)).max() <= 1


class _Logits:
    """A backend returning fixed logits at a network size other than the frame's (resizes both ways)."""

    input_size, input_dtype = (24, 40), "float32"

    def __init__(self):
        self.logits = np.random.default_rng(2).standard_normal((1, 19, 24, 40)).astype(np.float32)
        self.logits[0, :, :3] = 0.0  # ties: argmax must pick the same (first) class in both

    def __call__(self, x):
        assert x.shape == (1, 3, 24, 40) and x.dtype == np.float32
        self.seen = x  # the preprocessed input, compared too
        return {"logits": self.logits}


def test_cpp_prepost_is_bit_identical_to_numpy():
    try:
        import udaseg._runtime  # noqa: F401
    except ImportError:
        pytest.skip("the C++ runtime udaseg._runtime is not built (no compiler or pybind11 at install)")
    image = np.random.default_rng(3).integers(0, 256, (37, 61, 3), dtype=np.uint8)
    cpp, py = load_prepost("cpp"), load_prepost("python")
    assert (cpp.name, py.name) == ("cpp", "python") and load_prepost("auto").name == "cpp"
    net_a, net_b = _Logits(), _Logits()
    a, b = segment(net_a, image, None, True, cpp), segment(net_b, image, None, True, py)
    assert np.array_equal(net_a.seen, net_b.seen), "preprocessing differs"
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def test_prepost_cpp_without_the_runtime_says_how_to_get_it(monkeypatch):
    import udaseg

    monkeypatch.setitem(sys.modules, "udaseg._runtime", None)  # import fails as if it were not built
    monkeypatch.delattr(udaseg, "_runtime", raising=False)  # (an earlier import leaves it on the package)
    assert load_prepost("auto").name == "python"
    with pytest.raises(InferError, match="--prepost cpp: the C\\+\\+ runtime udaseg._runtime is not built"):
        load_prepost("cpp")


def run(args: list[str]) -> tuple[int, list[str]]:
    """main(args) -> (exit code, sorted names of the files in --output)."""
    from pathlib import Path

    code = main(args)
    out = Path(args[args.index("--output") + 1])
    return code, sorted(p.name for p in out.iterdir()) if out.is_dir() else []


def test_cli_writes_label_and_colour_pngs(fp32_onnx, frames, tmp_path, capsys):
    code, names = run(["--checkpoint", str(fp32_onnx), "--input", str(frames), "--output", str(tmp_path)])
    assert code == 0 and names == ["f0_color.png", "f0_labels.png", "f1_color.png", "f1_labels.png"]
    assert "2 written, 0 skipped" in capsys.readouterr().out
    labels = np.asarray(Image.open(tmp_path / "f0_labels.png"))
    color = np.asarray(Image.open(tmp_path / "f0_color.png"))
    assert labels.shape == (90, 150) and labels.dtype == np.uint8 and labels.max() < 19
    assert np.array_equal(color, np.asarray(PALETTE, dtype=np.uint8)[labels])
    main(["--checkpoint", str(fp32_onnx), "--input", str(frames / "f1.png"), "--output", str(tmp_path / "one")])
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "one" / "f1_labels.png")), np.asarray(Image.open(tmp_path / "f1_labels.png"))
    )


def test_a_bad_image_is_skipped_and_reported(fp32_onnx, frames, tmp_path, capsys):
    import shutil

    inputs = tmp_path / "in"
    shutil.copytree(frames, inputs)
    (inputs / "a_broken.png").write_bytes((frames / "f0.png").read_bytes()[:200])  # cut: sorts first
    (inputs / "b_fake.jpg").write_text("not a jpeg")
    code, names = run(["--checkpoint", str(fp32_onnx), "--input", str(inputs), "--output", str(tmp_path / "out")])
    assert code == 1  # the good images after the bad ones are all written, the run says it skipped some
    assert names == ["f0_color.png", "f0_labels.png", "f1_color.png", "f1_labels.png"]
    err = capsys.readouterr().err
    assert "2 written, 2 skipped" in err and "skipped " + str(inputs / "a_broken.png") in err and "b_fake.jpg" in err


def test_inputs_sharing_a_stem_get_distinct_outputs(fp32_onnx, frames, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(2))
    Image.fromarray(a).save(inputs / "a.png")
    Image.fromarray(b).save(inputs / "a.bmp")
    Image.fromarray(b).save(inputs / "a.png.bmp")  # stem 'a.png': must not meet a.png's output either
    Image.fromarray(a).save(inputs / "c.png")
    code, names = run(["--checkpoint", str(fp32_onnx), "--input", str(inputs), "--output", str(tmp_path / "out")])
    assert code == 0
    assert names == sorted(
        f"{stem}_{kind}.png" for stem in ("a.bmp", "a.png", "a.png.bmp", "c") for kind in ("labels", "color")
    )
    out = tmp_path / "out"
    read = lambda name: np.asarray(Image.open(out / name))  # noqa: E731
    assert np.array_equal(read("a.png_labels.png"), read("c_labels.png"))  # same picture, same class map
    assert np.array_equal(read("a.bmp_labels.png"), read("a.png.bmp_labels.png"))


def test_cli_user_errors_are_one_line(fp32_onnx, frames, tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "model.bin"), "--input", str(frames), "--output", str(tmp_path)]) == 2
    assert "unknown model type '.bin'" in capsys.readouterr().err
    assert main(["--checkpoint", str(fp32_onnx), "--input", str(tmp_path / "none"), "--output", str(tmp_path)]) == 2
    assert "none: no such image file or folder" in capsys.readouterr().err
    code = main(["--checkpoint", str(fp32_onnx), "--input", str(frames), "--output", str(tmp_path), "--topic", "/c"])
    assert code == 2 and "--topic /c needs a bag" in capsys.readouterr().err


def test_errors(fp32_onnx, frames, tmp_path, monkeypatch):
    backend = load_backend(fp32_onnx)
    with pytest.raises(ExportError, match=r"dim 2: expected 64, got 32"):
        backend(np.zeros((1, 3, 32, 128), np.float32))
    with pytest.raises(ValueError, match="unknown model type '.bin'"):
        load_backend(tmp_path / "model.bin")
    with pytest.raises(InferError, match="no images"):
        list_images(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    from udaseg.export.to_trt import TensorRTUnavailable

    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        load_backend(tmp_path / "model.engine")
