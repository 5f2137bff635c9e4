"""Evaluation: hand-computed confusion matrices, protocols, sliding window, flip averaging, evaluate(), the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from udaseg.evaluate import ConfusionMatrix, _windows, evaluate, format_table, main, predict, protocol_indices
from udaseg.models import build_model


# ----------------------------------------------------------------------------- confusion matrix
def test_hand_computed_matrix():
    """4 classes; one ignored pixel (its prediction 3 is not counted); class 3 absent from both -> NaN."""
    label = torch.tensor([[0, 0, 1, 1], [2, 255, 0, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 3, 0, 2]])
    cm = ConfusionMatrix(4)
    cm.update(pred, label)
    expected = torch.tensor([[2, 1, 0, 0], [0, 2, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(cm.mat, expected)
    iou = cm.iou()
    # class 0: TP 2, FP 1 (label 2), FN 1 -> 2/4; class 1: TP 2, FP 1, FN 1 -> 2/4; class 2: TP 0 -> 0
    torch.testing.assert_close(iou[:3], torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx(1 / 3)  # NaN class left out of the mean
    assert cm.pixel_acc() == pytest.approx(4 / 7)


def test_updates_accumulate_and_reset():
    cm = ConfusionMatrix(3)
    for _ in range(3):
        cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    assert cm.mat.sum() == 9 and cm.mat[1, 2] == 3
    cm.reset()
    assert cm.mat.sum() == 0 and math.isnan(cm.miou())


def test_out_of_range_values_are_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="label values"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="predictions"):
        cm.update(torch.tensor([0, 5]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def protocol_example() -> ConfusionMatrix:
    """One pixel per class; terrain(9) predicted as vegetation(8), wall(3) as train(16)."""
    label = torch.arange(19)
    pred = label.clone()
    pred[9], pred[3] = 8, 16
    cm = ConfusionMatrix(19)
    cm.update(pred, label)
    return cm


def test_protocol_subsets():
    cm = protocol_example()
    # IoU: vegetation 1/2, terrain 0, wall 0, train 1/2, the 15 others 1
    assert cm.miou(19) == pytest.approx(16 / 19)
    assert cm.miou(16) == pytest.approx(14.5 / 16)  # drops terrain, truck, train; keeps wall (0), vegetation (.5)
    assert cm.miou(13) == pytest.approx(12.5 / 13)  # also drops wall, fence, pole
    assert cm.pixel_acc(19) == pytest.approx(17 / 19)
    assert cm.pixel_acc(13) == pytest.approx(13 / 13)
    assert protocol_indices(16, 19) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
    with pytest.raises(ValueError, match="protocol"):
        cm.miou(17)


def test_result_in_percent_with_names():
    res = protocol_example().result(13)
    assert res["protocol"] == 13 and len(res["per_class"]) == 13
    assert res["per_class"]["vegetation"] == pytest.approx(50.0) and "terrain" not in res["per_class"]
    assert res["miou"] == pytest.approx(100 * 12.5 / 13)


def test_absent_class_is_none_in_result_and_na_in_table():
    cm = ConfusionMatrix(19)
    cm.update(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]))
    res = cm.result()
    assert res["per_class"]["sky"] is None
    assert res["miou"] == pytest.approx(100 * (0.5 + 0.5) / 2)
    table = format_table(res)
    assert "sky" in table and "n/a" in table and "mIoU (19 cl.)" in table and "50.00" in table


def test_format_table_with_before():
    after = protocol_example().result(16)
    before = {**after, "miou": after["miou"] - 5, "per_class": {k: 10.0 for k in after["per_class"]}}
    table = format_table(after, before=before)
    assert "before" in table and "change" in table and "+5.00" in table and "+90.00" in table


def test_all_reduce_without_process_group_is_a_no_op():
    cm = protocol_example()
    mat = cm.mat.clone()
    assert cm.all_reduce() is cm and torch.equal(cm.mat, mat)


def test_all_reduce_in_a_process_group(tmp_path):
    """A one-rank gloo group runs the real all_reduce path (sum over ranks = the matrix itself)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        cm = protocol_example()
        mat = cm.mat.clone()
        cm.all_reduce()
        assert torch.equal(cm.mat, mat)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- inference
class Pointwise(nn.Module):
    """Output stride 1, 1x1 conv: exactly translation-equivariant, so any sliding window equals the whole image."""

    num_classes, feature_dim, output_stride = 5, 3, 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, x):
        return {"logits": self.conv(x) * 4, "features": x}


def test_windows_cover_the_axis():
    assert _windows(10, 4, 3) == [0, 3, 6]
    assert _windows(8, 4, 4) == [0, 4]
    assert _windows(5, 8, 2) == [0]


@pytest.mark.parametrize("crop,stride", [((8, 8), (5, 3)), ((7, 13), (7, 13)), ((64, 64), (32, 32))])
def test_slide_equals_whole_for_a_pointwise_model(crop, stride):
    torch.manual_seed(0)
    model, x = Pointwise(), torch.rand(2, 3, 19, 23)
    whole = predict(model, x)
    slide = predict(model, x, mode="slide", crop=crop, stride=stride)
    torch.testing.assert_close(slide, whole, atol=1e-6, rtol=1e-5)


def test_slide_with_crop_at_least_the_image_equals_whole():
    torch.manual_seed(0)
    model, x = build_model("compact", num_classes=4, width=8, feature_dim=16).eval(), torch.rand(1, 3, 40, 56)
    whole = predict(model, x)
    assert whole.shape == (1, 4, 40, 56)
    torch.testing.assert_close(predict(model, x, mode="slide", crop=(64, 64), stride=(32, 32)), whole)
    part = predict(model, x, mode="slide", crop=(24, 32), stride=(16, 16))  # overlapping windows: still probabilities
    torch.testing.assert_close(part.sum(1), torch.ones(1, 40, 56))


def test_slide_rejects_gaps():
    with pytest.raises(ValueError, match="stride"):
        predict(Pointwise(), torch.rand(1, 3, 8, 8), mode="slide", crop=(4, 4), stride=(5, 4))
    with pytest.raises(ValueError, match="mode"):
        predict(Pointwise(), torch.rand(1, 3, 8, 8), mode="tiles")


def test_flip_averaging():
    torch.manual_seed(0)
    model, x = build_model("compact", num_classes=4, width=8, feature_dim=16).eval(), torch.rand(2, 3, 24, 40)
    plain, mirrored = predict(model, x), predict(model, x.flip(-1)).flip(-1)
    torch.testing.assert_close(predict(model, x, flip=True), (plain + mirrored) / 2)
    # flip averaging makes the prediction equivariant to a horizontal flip of the input
    torch.testing.assert_close(predict(model, x.flip(-1), flip=True), predict(model, x, flip=True).flip(-1))
    assert not torch.allclose(plain, mirrored)
    slide = predict(model, x, mode="slide", crop=(16, 16), stride=(8, 12), flip=True)
    torch.testing.assert_close(slide.sum(1), torch.ones(2, 24, 40))


def test_predict_runs_without_grad():
    out = predict(Pointwise(), torch.rand(1, 3, 4, 4))
    assert not out.requires_grad


# ----------------------------------------------------------------------------- evaluate()
class Oracle(nn.Module):
    """Reads the label back from the image (channel 0 holds label / 10): a perfect 'model' with a BatchNorm."""

    num_classes, feature_dim, output_stride = 19, 1, 1

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x):
        cls = torch.arange(19, dtype=x.dtype).view(1, -1, 1, 1)
        return {"logits": -(x[:, :1] * 10 - cls).abs() * 10, "features": self.bn(x[:, :1])}


class ListDataset(torch.utils.data.Dataset):
    num_classes, ignore_index = 19, 255

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def make_item(label: torch.Tensor, image_size=None):
    image = torch.zeros(3, *(image_size or label.shape))
    lab = label.clamp(max=18).float()
    image[0] = torch.nn.functional.interpolate(lab[None, None], size=image.shape[-2:], mode="nearest")[0, 0] / 10
    return {"image": image, "label": label, "name": "x", "index": 0}


def test_evaluate_perfect_model_with_mixed_sizes():
    torch.manual_seed(0)
    labels = [torch.randint(0, 3, (6, 8)), torch.randint(0, 3, (6, 8)), torch.randint(0, 3, (5, 9))]
    labels[0][0, :4] = 255
    data = ListDataset([make_item(lb) for lb in labels])
    model = Oracle().train()
    res = evaluate(model, data, batch_size=2, progress=False)
    assert model.training  # mode restored
    assert res["miou"] == pytest.approx(100.0) and res["pixel_acc"] == pytest.approx(100.0)
    assert res["per_class"]["road"] == pytest.approx(100.0) and res["per_class"]["bicycle"] is None
    assert res["images"] == 3 and res["protocol"] == 19
    sub = evaluate(model, torch.utils.data.Subset(data, [2]), protocol=16, mode="slide", crop=(4, 4), stride=(2, 2),
                   flip=True, progress=False)  # fmt: skip
    assert sub["miou"] == pytest.approx(100.0) and len(sub["per_class"]) == 16


def test_evaluate_resizes_predictions_to_the_label_size():
    label = torch.zeros(8, 8, dtype=torch.long)
    label[:, 4:] = 2
    data = ListDataset([make_item(label, image_size=(4, 4))])  # half-resolution image, full-resolution label
    res = evaluate(Oracle(), data, progress=False)
    assert res["miou"] > 50 and res["per_class"]["road"] is not None


def test_evaluate_a_wrong_model():
    label = torch.zeros(4, 4, dtype=torch.long)
    item = make_item(label)
    item["label"] = torch.ones(4, 4, dtype=torch.long)  # image says road, label says sidewalk
    res = evaluate(Oracle(), ListDataset([item]), progress=False)
    assert res["miou"] == 0.0 and res["per_class"]["road"] == 0.0 and res["per_class"]["sidewalk"] == 0.0


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_json(tmp_path, monkeypatch, capsys):
    from udaseg.checkpoint import save_checkpoint

    model = build_model("compact", num_classes=19, width=8, feature_dim=16)
    spec = {"name": "compact", "num_classes": 19, "kwargs": {"width": 8, "feature_dim": 16}}
    save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict(), "teacher": model.state_dict(), "model_spec": spec,
                                        "iteration": 5})  # fmt: skip
    torch.manual_seed(0)
    data = ListDataset([make_item(torch.randint(0, 19, (24, 32))) for _ in range(2)])
    seen = {}

    def fake_build_dataset(spec, split="train", role="target", **kw):
        seen.update(spec=spec, split=split, role=role)
        return data

    import udaseg.data

    monkeypatch.setattr(udaseg.data, "build_dataset", fake_build_dataset, raising=False)
    out = tmp_path / "res" / "r.json"
    main(["--checkpoint", str(tmp_path / "c.pt"), "--dataset", "synthetic", "--protocol", "13", "--mode", "slide",
          "--crop", "16", "16", "--stride", "8", "8", "--flip", "--workers", "0", "--output", str(out)])  # fmt: skip
    assert seen == {"spec": "synthetic", "split": "val", "role": "target"}
    res = json.loads(out.read_text())
    assert res["protocol"] == 13 and len(res["per_class"]) == 13 and res["iteration"] == 5
    assert res["weights"] == "teacher" and res["mode"] == "slide" and res["flip"] is True
    assert "mIoU" in capsys.readouterr().out
