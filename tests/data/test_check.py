"""The run-input check (issue cases: unlabelled val split, folder source without masks, all-ignore source, bad
val pairs found up front) and the folder dataset's paths staying inside ROOT."""

import numpy as np
import pytest
from data_fixtures import H, W, make_cityscapes, make_folder, make_gta5, rgb, save_jpg, save_png

from udaseg.data import DataError, SegDataset, build_dataset
from udaseg.data.check import check_dataset
from udaseg.data.labels import CITYSCAPES_LUT, TRAINID_LUT
from udaseg.data.rcs import class_stats, compute_counts
from udaseg.fileio import UserError


def check(ds, role="source", labels=True):
    return check_dataset(ds, role, require_labels=labels, progress=False, workers=2)


def test_summary_and_counts(tmp_path):
    raw = make_gta5(tmp_path, n=3)
    ds = build_dataset(f"gta5:{tmp_path}", role="source")
    report = check(ds)
    present = sorted({int(v) for r in raw for v in CITYSCAPES_LUT[r].ravel() if v < 19})
    assert report.summary() == (
        f"source gta5:{tmp_path} (split train): 3 pairs, all readable, sizes match, "
        f"{len(present)} of 19 classes present"
    )
    assert report.classes_present == present
    counts, pixels = compute_counts(ds, workers=1)
    np.testing.assert_array_equal(report.counts, counts)
    np.testing.assert_array_equal(report.pixels, pixels)
    cached = class_stats(ds, tmp_path / "run", counts=report.counts, pixels=report.pixels)  # no second decode
    np.testing.assert_array_equal(cached, counts)
    assert isinstance(DataError("x"), UserError) and isinstance(DataError("x"), ValueError)


def test_unlabelled_cityscapes_val_is_refused_naming_gtfine(tmp_path):
    """Issue case 3: a val split without gtFine/ gave mIoU nan after a whole run."""
    make_cityscapes(tmp_path, "val")
    (tmp_path / "gtFine").rename(tmp_path / "gtFine_elsewhere")
    val = build_dataset(f"cityscapes:{tmp_path}", split="val")
    assert val.labelled is False
    with pytest.raises(
        DataError,
        match=r"val dataset cityscapes:.*has no labels: .*gtFine/val does not exist; "
        r"evaluation needs labels.*--no-eval",
    ):
        check(val, "val")
    assert "labels not needed" in check(val, "target", labels=False).summary()  # fine as target images


def test_folder_without_masks_as_source_names_the_folder(tmp_path):
    """Issue case 8: it loaded as unlabelled and ended in a rare-class-sampling message."""
    make_folder(tmp_path)
    (tmp_path / "masks").rename(tmp_path / "masks_old")
    with pytest.raises(
        DataError,
        match=rf"source dataset folder:{tmp_path} .*has no labels: {tmp_path}/masks does "
        r"not exist\. The source domain must be labelled",
    ):
        build_dataset(f"folder:{tmp_path}", role="source")
    target = build_dataset(f"folder:{tmp_path}", role="target")
    with pytest.raises(DataError, match=rf"{tmp_path}/masks does not exist; the source domain must be labelled"):
        check(target, "source")


def test_all_ignore_source_is_refused(tmp_path):
    """Issue case 8: an all-ignore source gave the same rare-class-sampling message."""
    make_gta5(tmp_path, n=2)
    for i in range(2):
        save_png(tmp_path / "labels" / f"{i:05d}.png", np.full((H, W), (0, 77)[i]))  # unlabeled / undefined
    ds = build_dataset(f"gta5:{tmp_path}", role="source")
    with pytest.raises(
        DataError,
        match=r"every pixel of its 2 label files is ignore \(255\) or a value the format "
        r"does not define \(240 such pixels\)",
    ):
        check(ds)


def test_bad_val_pairs_found_up_front_first_few_and_count(tmp_path):
    """Issue case 4: size mismatches and unreadable files passed unless the image was drawn."""
    make_gta5(tmp_path, n=14)
    for i in range(12):
        path = tmp_path / "images" / f"{i:05d}.png"
        path.write_bytes(path.read_bytes()[:-20])  # cut inside the last chunks
    save_png(tmp_path / "labels" / "00013.png", np.full((H + 3, W), 7))
    ds = build_dataset(f"gta5:{tmp_path}")
    with pytest.raises(DataError) as info:
        check(ds, "val")
    text = str(info.value)
    assert text.startswith(f"val dataset gta5:{tmp_path} (split train): 13 of 14 pairs cannot be used:")
    assert "images/00000.png" in text and "images/00009.png" in text and "images/00010.png" not in text
    assert text.endswith("... and 3 more")


def test_truncated_jpeg_found_without_decoding(tmp_path):
    path = tmp_path / "x.jpg"
    save_jpg(path, rgb(np.random.default_rng(0), 256, 256))
    files = [(str(path), None)]
    ds = SegDataset(files, name="t", root=str(tmp_path), split="train", lut=TRAINID_LUT)
    assert check(ds, "target", labels=False).pairs == 1
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(DataError, match=r"x\.jpg.*end-of-image marker"):
        check(ds, "target", labels=False)


def test_target_labels_are_not_read_and_unknown_values_reported(tmp_path):
    make_gta5(tmp_path, n=2)
    (tmp_path / "labels" / "00001.png").write_bytes(b"junk")
    assert (
        check(build_dataset(f"gta5:{tmp_path}"), "target", labels=False)
        .summary()
        .endswith("2 images, all readable (labels not needed)")
    )
    lbl = np.full((H, W), 7)
    lbl[0, :5] = 77
    save_png(tmp_path / "labels" / "00001.png", lbl)
    summary = check(build_dataset(f"gta5:{tmp_path}")).summary()
    assert "5 pixels with undefined label values set to ignore (e.g. " in summary and "00001.png" in summary


def test_empty_dataset(tmp_path):
    with pytest.raises(DataError, match="holds no images"):
        check(SegDataset([], name="t", root=str(tmp_path), split="val", lut=TRAINID_LUT), "val")


@pytest.mark.parametrize(
    "key, value",
    [("images", "../outside"), ("masks", "../outside"), ("images", "{abs}"), ("masks", "sub/../../outside")],
)
def test_folder_paths_stay_inside_root(tmp_path, key, value):
    """Issue case 9: classes.yaml could point outside ROOT, and the error listed that folder's contents."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret-payroll.txt").write_text("x")
    root = tmp_path / "ds"
    value = value.format(abs=outside)
    make_folder(root, yaml_text=f"classes:\n  0: road\n  1: car\n{key}: {value}\n")
    with pytest.raises(DataError) as info:
        build_dataset(f"folder:{root}")
    text = str(info.value)
    assert f"'{key}: {value}' points outside the dataset folder" in text and "classes.yaml" in text
    assert "secret-payroll" not in text


def test_folder_subfolder_names_inside_root_still_work(tmp_path):
    make_folder(
        tmp_path / "ds",
        yaml_text="classes:\n  0: road\n  1: car\n  2: sky\n  3: ignore\n  255: ignore\n"
        "images: ./images\nmasks: masks\n",
    )
    assert build_dataset(f"folder:{tmp_path / 'ds'}", role="source").labelled


def test_datasets_without_image_files_check_through_verify_item(tmp_path):
    class Frames(SegDataset):
        def verify_item(self, i):
            if i == 1:
                raise DataError("bag drive.mcap, topic /cam: frame 1 cannot be decoded")
            return (H, W)

    ds = Frames(
        [("drive.mcap#0", None), ("drive.mcap#1", None)],
        name="rosbag",
        root="drive.mcap",
        split="train",
        lut=TRAINID_LUT,
    )
    with pytest.raises(DataError, match=r"1 of 2 pairs cannot be used:\n  bag drive.mcap, topic /cam: frame 1"):
        check(ds, "target", labels=False)
