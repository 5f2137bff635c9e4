"""Image/label reading, the 16-bit PNG decoder and its errors."""

import numpy as np
import pytest
from data_fixtures import png16, save_png

from udaseg.data.io import DatasetError, read_image, read_label, read_label_channel, read_png_array


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4), (4, 3)])
def test_png16_decoder_all_filters(tmp_path, channels, filters):
    rng = np.random.default_rng(channels)
    data = rng.integers(0, 65536, (7, 13, channels), dtype=np.uint16)
    path = tmp_path / "x.png"
    path.write_bytes(png16(data, filters))
    np.testing.assert_array_equal(read_png_array(path), data)
    for c in range(channels):
        np.testing.assert_array_equal(read_label_channel(path, c), data[..., c])


def test_png16_one_pixel(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(png16(np.array([[[3, 7, 9]]]), (4,)))
    assert read_label_channel(path, 0).tolist() == [[3]]


def test_read_label_channel_of_8bit_png(tmp_path):
    save_png(tmp_path / "g.png", np.full((4, 5), 21))
    assert (read_label_channel(tmp_path / "g.png", 0) == 21).all()
    with pytest.raises(DatasetError, match="channels"):
        read_label_channel(tmp_path / "g.png", 1)


def test_truncated_png16_names_file(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(png16(np.ones((9, 9, 3)))[:-30])
    with pytest.raises(DatasetError, match="cut.png.*truncated"):
        read_png_array(path)


def test_truncated_image_names_file(tmp_path):
    rng = np.random.default_rng(0)
    save_png(tmp_path / "full.png", rng.integers(0, 256, (64, 64, 3)))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cut\.png"):
        read_image(tmp_path / "cut.png")


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match="junk.png"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(DatasetError, match="junk.png.*expected a PNG"):
        read_png_array(tmp_path / "junk.png")
    with pytest.raises(DatasetError, match="not found.*nothere.png"):
        read_label(tmp_path / "nothere.png")


def test_colour_label_refused(tmp_path):
    save_png(tmp_path / "x_color.png", np.zeros((4, 4, 3)))
    with pytest.raises(DatasetError, match="x_color.png.*single-channel.*found mode RGB"):
        read_label(tmp_path / "x_color.png")


def test_read_image_converts_to_rgb(tmp_path):
    save_png(tmp_path / "g.png", np.full((3, 4), 9))
    img = read_image(tmp_path / "g.png")
    assert img.shape == (3, 4, 3) and img.dtype == np.uint8 and (img == 9).all()
