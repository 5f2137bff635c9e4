"""udaseg.infer: the same pre/post-processing for .pt, .onnx and .engine; PNG outputs; clear errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from export_testdata import SIZE
from PIL import Image

from udaseg.data.labels import PALETTE
from udaseg.export.onnx_utils import ExportError
from udaseg.infer import list_images, load_backend, main, segment


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


def test_cli_writes_label_and_colour_pngs(fp32_onnx, frames, tmp_path):
    written = main(["--checkpoint", str(fp32_onnx), "--input", str(frames), "--output", str(tmp_path)])
    assert sorted(p.name for p in written) == ["f0_color.png", "f0_labels.png", "f1_color.png", "f1_labels.png"]
    labels = np.asarray(Image.open(tmp_path / "f0_labels.png"))
    color = np.asarray(Image.open(tmp_path / "f0_color.png"))
    assert labels.shape == (90, 150) and labels.dtype == np.uint8 and labels.max() < 19
    assert np.array_equal(color, np.asarray(PALETTE, dtype=np.uint8)[labels])
    main(["--checkpoint", str(fp32_onnx), "--input", str(frames / "f1.png"), "--output", str(tmp_path / "one")])
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "one" / "f1_labels.png")), np.asarray(Image.open(tmp_path / "f1_labels.png"))
    )


def test_errors(fp32_onnx, frames, tmp_path, monkeypatch):
    backend = load_backend(fp32_onnx)
    with pytest.raises(ExportError, match=r"dim 2: expected 64, got 32"):
        backend(np.zeros((1, 3, 32, 128), np.float32))
    with pytest.raises(ValueError, match="unknown model type '.bin'"):
        load_backend(tmp_path / "model.bin")
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    from udaseg.export.to_trt import TensorRTUnavailable

    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        load_backend(tmp_path / "model.engine")
