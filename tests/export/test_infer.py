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
from udaseg.infer import InferError, list_images, load_backend, main, segment


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
