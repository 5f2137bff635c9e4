"""ACDC, Dark Zurich, BDD100K and Mapillary Vistas on fixtures in their real on-disk layouts, and bad inputs."""

from pathlib import Path

import numpy as np
import pytest
from data_fixtures import H, W, make_acdc, make_bdd100k, make_darkzurich, make_mapillary, rgb, save_png

from udaseg.data import DatasetError, build_dataset, dataset_options
from udaseg.data.check import check_dataset
from udaseg.data.labels import CLASS_NAMES
from udaseg.data.mapillary import CLASSES


def _labels_match(ds, expected: dict, lut=None):
    assert ds.labelled and len(ds) == len(expected)
    for i, (img, _) in enumerate(ds.files):
        item = ds[i]
        assert item["image"].shape == (3, H, W) and item["label"].shape == (H, W)
        want = expected[img] if lut is None else lut(expected[img])
        np.testing.assert_array_equal(item["label"].numpy(), want)


def test_acdc_conditions_splits_and_labels(tmp_path):
    labels = make_acdc(tmp_path, conditions=("fog", "night", "rain", "snow"))
    train = build_dataset(f"acdc:{tmp_path}", role="source")
    assert len(train) == 8 and train.name == "acdc"
    _labels_match(train, {k: v for k, v in labels.items() if "/train/" in k})
    night = build_dataset(f"acdc:{tmp_path}", split="val", conditions=["night"])
    assert (
        len(night) == 1 and "/night/val/" in night.files[0][0] and night.files[0][1].endswith("_gt_labelTrainIds.png")
    )
    _labels_match(night, {k: v for k, v in labels.items() if "/night/val/" in k})
    test = build_dataset(f"acdc:{tmp_path}", split="test")
    assert len(test) == 4 and not test.labelled and "gt/fog/test" in test.unlabelled_reason
    ref = build_dataset(f"acdc:{tmp_path}", split="train_ref", conditions="snow")
    assert len(ref) == 1 and ref.files[0][0].endswith("_rgb_ref_anon.png") and not ref.labelled


def test_acdc_bad_inputs(tmp_path):
    make_acdc(tmp_path, conditions=("fog",))
    with pytest.raises(
        DatasetError,
        match=r"(?s)no \*/\*_rgb_anon.png files in .*rgb_anon/night/train.*does not "
        r"exist.*Expected layout",
    ):
        build_dataset(f"acdc:{tmp_path}", conditions=["night"])  # a condition that was not unpacked
    with pytest.raises(DatasetError, match=r"conditions=\['haze'\].*fog.*\['haze'\] are not among them"):
        build_dataset(f"acdc:{tmp_path}", conditions=["haze"])
    with pytest.raises(DatasetError, match="has no option 'condition'.*'conditions'"):
        build_dataset(f"acdc:{tmp_path}", condition=["fog"])
    next((tmp_path / "gt" / "fog" / "train").rglob("*_labelTrainIds.png")).unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 images have no label file: expected e\.g\. \[.*_gt_labelTrainIds"):
        build_dataset(f"acdc:{tmp_path}", conditions=["fog"])
    with pytest.raises(DatasetError, match=r"(?s)root folder is missing.*rgb_anon/<condition>"):
        build_dataset(f"acdc:{tmp_path / 'nothere'}")


def test_darkzurich_times_and_val_labels(tmp_path):
    labels = make_darkzurich(tmp_path)
    night = build_dataset(f"darkzurich:{tmp_path}")
    assert len(night) == 2 and all("/train/night/" in f for f, _ in night.files)
    assert not night.labelled and "no public labels" in night.unlabelled_reason
    assert len(build_dataset(f"darkzurich:{tmp_path}", times=["night", "twilight", "day"])) == 4
    val = build_dataset(f"darkzurich:{tmp_path}", split="val")
    _labels_match(val, labels)  # labelTrainIds preferred over the labelIds files beside them
    assert not build_dataset(f"darkzurich:{tmp_path}", split="test").labelled
    with pytest.raises(DatasetError, match=r"rgb_anon/val/day"):
        build_dataset(f"darkzurich:{tmp_path}", split="val", times=["day"])
    with pytest.raises(DatasetError, match="source dataset darkzurich.*has no labels.*no public labels"):
        build_dataset(f"darkzurich:{tmp_path}", role="source")


def test_bdd100k(tmp_path):
    labels = make_bdd100k(tmp_path)
    train = build_dataset(f"bdd100k:{tmp_path}", role="source")
    assert len(train) == 2 and train.files[0][0].endswith(".jpg")
    assert "/labels/sem_seg/masks/train/" in train.files[0][1]
    _labels_match(train, {k: v for k, v in labels.items() if "/train/" in k})
    test = build_dataset(f"bdd100k:{tmp_path}", split="test")
    assert len(test) == 1 and not test.labelled and "masks/test does not exist" in test.unlabelled_reason
    with pytest.raises(DatasetError, match=r"(?s)no \.jpg images for split 'vall'.*images/10k/<split>"):
        build_dataset(f"bdd100k:{tmp_path}", split="vall")


@pytest.mark.parametrize("version, legacy", [("v1.2", False), ("v1.2", True), ("v2.0", False)])
def test_mapillary_versions_map_to_cityscapes(tmp_path, version, legacy):
    raw = make_mapillary(tmp_path, version, legacy=legacy)
    names = CLASSES[version]
    # the mapping by name, written out for the classes whose train id a reader would check first
    expected_by_name = {
        "construction--flat--road": "road",
        "construction--barrier--curb": "sidewalk",
        "nature--sky": "sky",
        "object--vehicle--car": "car",
        "object--vehicle--on-rails": "train",
        "human--rider--motorcyclist": "rider",
        "object--support--utility-pole": "pole",
        "construction--flat--parking": None,
        "void--unlabeled": None,
        "object--vehicle--caravan": None,
        "object--traffic-sign--back": None,
    }
    expected_by_name.update(
        {
            "marking--discrete--stop-line": "road",
            "human--person--person-group": "person",
            "object--traffic-light--pedestrians": "traffic light",
        }
        if version == "v2.0"
        else {"marking--general": "road", "human--person": "person", "object--traffic-light": "traffic light"}
    )
    table = np.full(256, 255)
    for name, cs in expected_by_name.items():
        table[names.index(name)] = 255 if cs is None else CLASS_NAMES.index(cs)
    ds = build_dataset(f"mapillary:{tmp_path}", split="val", version=version, role="source")
    assert len(ds) == 1 and ds.files[0][0].endswith(".jpg")
    label = ds[0]["label"].numpy()
    img_raw = raw[ds.files[0][0]]
    checked = np.isin(img_raw, [names.index(n) for n in expected_by_name])
    assert checked.any()
    np.testing.assert_array_equal(label[checked], table[img_raw[checked]])
    assert set(np.unique(label).tolist()) <= set(range(19)) | {255}
    assert len(build_dataset(f"mapillary:{tmp_path}", split="training", version=version)) == 2
    assert not build_dataset(f"mapillary:{tmp_path}", split="test", version=version).labelled


def test_mapillary_reads_class_order_from_config(tmp_path):
    names = list(reversed(CLASSES["v1.2"]))  # a config whose order differs from the published one
    raw = make_mapillary(tmp_path, "v1.2", names=names)
    ds = build_dataset(f"mapillary:{tmp_path}", split="val")
    label, img_raw = ds[0]["label"].numpy(), raw[ds.files[0][0]]
    road = img_raw == names.index("construction--flat--road")
    car = img_raw == names.index("object--vehicle--car")
    assert road.any() or car.any()
    assert (label[road] == 0).all() and (label[car] == 13).all()


def test_mapillary_bad_inputs(tmp_path):
    make_mapillary(tmp_path, "v1.2")
    with pytest.raises(DatasetError, match=r"version='v3': expected one of \['v1.2', 'v2.0'\]"):
        build_dataset(f"mapillary:{tmp_path}", version="v3")
    with pytest.raises(DatasetError, match=r"source dataset mapillary.*no labels.*validation/v2.0/labels does not"):
        build_dataset(f"mapillary:{tmp_path}", split="val", version="v2.0", role="source")
    (tmp_path / "config_v1.2.json").write_text('{"labels": [{"name": "a"}]}')
    with pytest.raises(DatasetError, match=r"config_v1.2.json: expected the Mapillary Vistas v1.2 class list"):
        build_dataset(f"mapillary:{tmp_path}", split="val")
    (tmp_path / "config_v1.2.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"config_v1.2.json: expected Mapillary's config JSON"):
        build_dataset(f"mapillary:{tmp_path}", split="val")


def make_acdc_all(root):
    return make_acdc(root, conditions=("fog", "night", "rain", "snow"))


@pytest.mark.parametrize(
    "maker, spec, split",
    [
        (make_acdc_all, "acdc", "val"),
        (make_darkzurich, "darkzurich", "val"),
        (make_bdd100k, "bdd100k", "val"),
        (make_mapillary, "mapillary", "val"),
    ],
)
def test_same_bad_input_rules(tmp_path, maker, spec, split):
    """Truncated images and label/image size mismatches are named by the check, like the other loaders'."""
    maker(tmp_path)
    ds = build_dataset(f"{spec}:{tmp_path}", split=split)
    report = check_dataset(ds, "val", require_labels=True, progress=False)
    assert report.summary().startswith(f"val {spec}:{tmp_path} (split {split}): {len(ds)} pairs, all readable")
    save_png(Path(ds.files[0][1]), np.zeros((H + 1, W)))
    with pytest.raises(DatasetError, match=rf"{ds.files[0][0]} is {W}x{H} .* but {ds.files[0][1]} is {W}x{H + 1}"):
        check_dataset(ds, "val", require_labels=True, progress=False)
    img = Path(ds.files[-1][0])
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    bad = 1 if len(ds) == 1 else 2
    with pytest.raises(DatasetError, match=rf"(?si){bad} of {len(ds)} pairs cannot be used.*{img.name}.*truncated"):
        check_dataset(ds, "val", require_labels=True, progress=False)


def test_dataset_options_from_config():
    class Data:
        acdc = {"conditions": ["night"]}
        synthetic = {"count": 3}

    assert dataset_options("acdc:/x", Data()) == {"conditions": ["night"]}
    assert dataset_options("synthetic_source", Data()) == {"count": 3}
    assert dataset_options("gta:/x", Data()) == {}
    assert dataset_options("mapillary:/x", {"mapillary": {"version": "v2.0"}}) == {"version": "v2.0"}


def test_rgb_helper_shape():  # keeps the fixture helpers honest about the (H, W) they write
    assert rgb(np.random.default_rng(0)).shape == (H, W, 3)
