"""Each loader on fixtures in the real on-disk formats, and the bad inputs."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from data_fixtures import H, W, make_cityscapes, make_folder, make_gta5, make_synthia, rgb, save_png

from udaseg.data import DatasetError, DatasetWarning, LabelWarning, build_dataset, parse_spec
from udaseg.data.check import check_dataset
from udaseg.data.labels import CITYSCAPES_LUT, SYNTHIA_LUT


def _check_item(item, i):
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["label"].shape == (H, W) and item["label"].dtype == torch.int64
    assert item["index"] == i and isinstance(item["name"], str)


def test_gta5(tmp_path):
    raw = make_gta5(tmp_path)
    ds = build_dataset(f"gta5:{tmp_path}", role="source")
    assert len(ds) == 3 and ds.num_classes == 19 and ds.ignore_index == 255 and ds.class_names[0] == "road"
    for i in range(3):
        item = ds[i]
        _check_item(item, i)
        np.testing.assert_array_equal(item["label"].numpy(), CITYSCAPES_LUT[raw[i]])
    assert ds.files[0][0].endswith("images/00000.png") and ds.files[0][1].endswith("labels/00000.png")


def test_gta5_split_file(tmp_path):
    make_gta5(tmp_path, n=3)
    (tmp_path / "val.txt").write_text("00001.png\n")
    assert len(build_dataset(f"gta5:{tmp_path}", split="val")) == 1
    with pytest.raises(DatasetError, match="test.txt"):
        build_dataset(f"gta5:{tmp_path}", split="test")


@pytest.mark.parametrize("channels", [3, 4])
def test_synthia_16bit(tmp_path, channels):
    raw = make_synthia(tmp_path, channels=channels)
    ds = build_dataset(f"synthia:{tmp_path}", role="source")
    for i in range(3):
        item = ds[i]
        _check_item(item, i)
        np.testing.assert_array_equal(item["label"].numpy(), SYNTHIA_LUT[raw[i]])


@pytest.mark.parametrize("train_ids", [False, True])
def test_cityscapes(tmp_path, train_ids):
    raw = make_cityscapes(tmp_path, "val", train_ids=train_ids)
    ds = build_dataset(f"cityscapes:{tmp_path}", split="val")
    assert len(ds) == 3
    assert all(lbl.endswith("_labelTrainIds.png" if train_ids else "_labelIds.png") for _, lbl in ds.files)
    for i in range(3):
        _check_item(ds[i], i)
        np.testing.assert_array_equal(ds[i]["label"].numpy(), CITYSCAPES_LUT[raw[i]])


def test_cityscapes_unlabelled_split(tmp_path):
    make_cityscapes(tmp_path, "train")
    ds = build_dataset(f"cityscapes:{tmp_path}", labels=False)
    assert ds.files[0][1] is None and (ds[0]["label"] == 255).all()


def test_folder_yaml(tmp_path):
    masks = make_folder(tmp_path)
    ds = build_dataset(f"folder:{tmp_path}")
    expected = {0: 0, 1: 13, 2: 10, 3: 255, 255: 255}
    for i in range(3):
        _check_item(ds[i], i)
        np.testing.assert_array_equal(ds[i]["label"].numpy(), np.vectorize(expected.get)(masks[i]))


def test_folder_custom_taxonomy_and_unlabelled(tmp_path):
    make_folder(
        tmp_path,
        yaml_text="class_names: [background, crack]\nclasses:\n  0: background\n  1: crack\n"
        "  2: ignore\n  3: crack\n  255: ignore\n",
    )
    ds = build_dataset(f"folder:{tmp_path}")
    assert ds.num_classes == 2 and ds.class_names == ("background", "crack")
    assert set(ds[0]["label"].unique().tolist()) <= {0, 1, 255}
    (tmp_path / "masks").rename(tmp_path / "gone")
    assert build_dataset(f"folder:{tmp_path}").files[0][1] is None  # unlabelled target data


@pytest.mark.parametrize(
    "text, match",
    [
        ("classes: {}\n", "non-empty 'classes'"),
        ("classes:\n  0: lorry\n", "'lorry' is not one of"),
        ("classes:\n  x: road\n", "not an integer"),
        ("classes: [\n", "not valid YAML"),
    ],
)
def test_folder_bad_yaml(tmp_path, text, match):
    make_folder(tmp_path, yaml_text=text)
    with pytest.raises(DatasetError, match=match):
        build_dataset(f"folder:{tmp_path}")


def test_size_mismatch_names_both_files(tmp_path):
    make_gta5(tmp_path, n=2)
    save_png(tmp_path / "images" / "00001.png", rgb(np.random.default_rng(0), H + 2, W))
    ds = build_dataset(f"gta5:{tmp_path}")
    with pytest.raises(DatasetError, match=r"images/00001\.png is 20x14.*labels/00001\.png is 20x12"):
        ds[1]
    with pytest.raises(DatasetError, match=r"1 of 2 pairs cannot be used:\n.*images/00001\.png is 20x14"):
        check_dataset(ds, "source", require_labels=True, progress=False)
    ds = build_dataset(f"gta5:{tmp_path}", size_mismatch="resize")
    assert ds[1]["label"].shape == (H + 2, W)


def test_truncated_image_names_file(tmp_path):
    make_gta5(tmp_path, n=2)
    path = tmp_path / "images" / "00000.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DatasetError, match=r"images/00000\.png"):
        build_dataset(f"gta5:{tmp_path}")[0]


def test_unknown_label_values_warn_once_with_count(tmp_path):
    make_gta5(tmp_path, n=2)
    for i in range(2):
        lbl = np.full((H, W), 7)
        lbl[0, : 3 + i] = 77  # not a Cityscapes id
        save_png(tmp_path / "labels" / f"{i:05d}.png", lbl)
    ds = build_dataset(f"gta5:{tmp_path}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a, b = ds[0]["label"], ds[1]["label"]
    relevant = [w for w in caught if issubclass(w.category, LabelWarning)]
    assert len(relevant) == 1 and "3 pixels with label values [77]" in str(relevant[0].message)
    assert "00000.png" in str(relevant[0].message)
    assert ds.unknown_pixels == 7 and (a[0, :3] == 255).all() and (b[0, :4] == 255).all()


@pytest.mark.parametrize(
    "spec, match",
    [
        ("gta5:{root}/nothere", r"(?s)root folder is missing.*Expected layout:\n.*images/"),
        ("gta5:{root}", r"Expected layout"),
        ("synthia:{root}", r"GT/LABELS"),
        ("cityscapes:{root}", r"leftImg8bit/<split>/<city>"),
        ("folder:{root}", r"classes.yaml is missing"),
    ],
)
def test_empty_or_misnamed_folder_shows_layout(tmp_path, spec, match):
    (tmp_path / "Images").mkdir()  # misnamed
    with pytest.raises(DatasetError, match=match):
        build_dataset(spec.format(root=tmp_path), split="val" if "cityscapes" in spec else "train")


def test_cityscapes_missing_labels(tmp_path):
    make_cityscapes(tmp_path, "val")
    next((tmp_path / "gtFine" / "val" / "bonn").glob("*_labelIds.png")).unlink()
    with pytest.raises(DatasetError, match=r"1 of 3 images have no"):
        build_dataset(f"cityscapes:{tmp_path}", split="val")


def test_cityscapes_mixed_label_kinds(tmp_path):
    make_cityscapes(tmp_path, "val", train_ids=True)
    next((tmp_path / "gtFine" / "val" / "aachen").glob("*_labelIds.png")).unlink()
    assert build_dataset(f"cityscapes:{tmp_path}", split="val").files[0][1].endswith("_labelTrainIds.png")
    next((tmp_path / "gtFine" / "val" / "bonn").glob("*_labelTrainIds.png")).unlink()
    with pytest.raises(DatasetError, match="mixes"):
        build_dataset(f"cityscapes:{tmp_path}", split="val")


def test_unpaired_files_skipped_with_warning(tmp_path):
    make_gta5(tmp_path, n=3)
    (tmp_path / "labels" / "00002.png").unlink()
    with pytest.warns(DatasetWarning, match="skipping 1 images without a label"):
        assert len(build_dataset(f"gta5:{tmp_path}")) == 2


def test_spec_parsing():
    assert parse_spec("gta5:/data/gta") == ("gta5", "/data/gta")
    assert parse_spec("GTA:C:/x") == ("gta5", "C:/x")
    assert parse_spec("synthetic") == ("synthetic", None)
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        parse_spec("imagenet:/x")
    with pytest.raises(DatasetError, match="needs a root"):
        build_dataset("cityscapes")


def test_items_are_whole_images_and_picklable(tmp_path):
    make_gta5(tmp_path, n=2)
    ds = build_dataset(f"gta5:{tmp_path}")
    a, b = ds[1], pickle.loads(pickle.dumps(ds))[1]
    assert a["image"].shape == (3, H, W) and a["label"].shape == (H, W)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    with pytest.raises(DatasetError, match="has no option 'crop_size'.*size_mismatch"):
        build_dataset(f"gta5:{tmp_path}", crop_size=8)  # crops are engine.data.TrainView's


def test_dataloader_workers_report_the_file(tmp_path):
    make_gta5(tmp_path, n=2)
    (tmp_path / "images" / "00001.png").write_bytes(b"garbage")
    ds = build_dataset(f"gta5:{tmp_path}")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)
    with pytest.raises(DatasetError, match=r"images/00001\.png"):
        next(iter(loader))
