"""Model registry and the output contract: shapes at odd sizes, attributes, parameter groups, frozen BatchNorm."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from udaseg.models import build_model, list_models, register_model, upsample
from udaseg.models.common import param_groups


def test_registry_lists_the_models():
    assert {"compact", "deeplabv2_r101", "deeplabv2_r50"} <= set(list_models())


def test_unknown_model_names_the_registered_ones():
    with pytest.raises(KeyError, match="compact"):
        build_model("no_such_model")


def test_register_twice_is_an_error():
    def compact(num_classes=19):
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(compact)


def check_output(model, size, batch=2):
    h, w = size
    x = torch.rand(batch, 3, h, w)
    out = model(x)
    s = model.output_stride
    oh, ow = math.ceil(h / s), math.ceil(w / s)
    assert set(out) == {"logits", "features", "encoder"}
    assert out["logits"].shape == (batch, model.num_classes, oh, ow)
    assert out["features"].shape == (batch, model.feature_dim, oh, ow)
    assert torch.isfinite(out["logits"]).all()
    return out


@pytest.mark.parametrize("size", [(65, 97), (17, 9), (1, 1)])
@pytest.mark.parametrize("kw", [{}, {"width": 8, "feature_dim": 32, "depth8": 1, "depth16": 1}])
def test_compact_shapes(size, kw):
    torch.manual_seed(0)
    model = build_model("compact", num_classes=7, **kw)
    assert model.num_classes == 7 and model.output_stride == 8
    check_output(model.eval(), size, batch=1)
    if min(size) > 1:  # BatchNorm in train mode needs more than one value per channel
        out = check_output(model.train(), size)
        out["logits"].sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_compact_parameter_count():
    n = sum(p.numel() for p in build_model("compact").parameters())
    assert 0.5e6 < n < 2e6, n


def test_compact_channels_last_matches():
    torch.manual_seed(0)
    model = build_model("compact", width=16).eval()
    x = torch.rand(2, 3, 40, 72)
    ref = model(x)["logits"]
    cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))["logits"]
    torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["deeplabv2_r50", "deeplabv2_r101"])
def test_deeplabv2_shapes(name):
    """One forward without grad on a small odd input: the ResNet-101 test stays cheap."""
    model = build_model(name, num_classes=5).eval()
    assert model.feature_dim == 2048 and model.output_stride == 8
    with torch.no_grad():
        check_output(model, (33, 41), batch=1)


def test_deeplabv2_freeze_bn():
    model = build_model("deeplabv2_r50", freeze_bn=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    assert model.training  # the rest of the model follows train()/eval()


def test_deeplabv2_torchvision_layout():
    """stride_in_1x1=False (torchvision v1.5) keeps the same keys and the same output size."""
    a = build_model("deeplabv2_r50").state_dict()
    b = build_model("deeplabv2_r50", stride_in_1x1=False).state_dict()
    assert a.keys() == b.keys()
    assert "layer3.0.downsample.0.weight" in a and "classifier.convs.3.weight" in a


@pytest.mark.parametrize("name", ["compact", "deeplabv2_r50"])
def test_param_groups_head_at_ten_times(name):
    model = build_model(name)
    groups = model.param_groups(1e-3)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[0]["lr"] == 1e-3 and groups[1]["lr"] == pytest.approx(1e-2)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    head = {id(p) for p in model.classifier.parameters()}
    assert head <= {id(p) for p in groups[1]["params"]}
    assert [len(g["params"]) for g in param_groups(model, 1e-3)] == [len(g["params"]) for g in groups]


def test_normalisation_is_inside_the_model():
    model = build_model("compact")
    assert not any(k.startswith("normalize.") for k in model.state_dict())  # constants, not weights
    x = torch.full((1, 3, 8, 8), 0.5)
    y = model.normalize(x)
    torch.testing.assert_close(
        y[0, :, 0, 0], (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    )


def test_upsample_is_bilinear_without_corner_alignment():
    x = torch.arange(4.0).view(1, 1, 2, 2)
    y = upsample(x, (4, 4))
    ref = torch.nn.functional.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(y, ref)
    assert upsample(x, x.shape[-2:]) is x


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside torch.export
def test_compact_exports_to_onnx_with_dynamic_size(tmp_path):
    """The dynamo exporter (torch's default) gives one graph for any H, W that matches ONNX Runtime."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")

    class Logits(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)["logits"]

    torch.manual_seed(0)
    model = Logits(build_model("compact", num_classes=5, width=8, feature_dim=16)).eval()
    dims = {2: torch.export.Dim("h", min=8, max=2048), 3: torch.export.Dim("w", min=8, max=2048)}
    torch.onnx.export(model, (torch.rand(1, 3, 64, 96),), tmp_path / "c.onnx", input_names=["x"],
                      dynamic_shapes={"x": dims}, dynamo=True)  # fmt: skip
    session = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    for h, w in [(64, 96), (65, 97), (33, 200)]:
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            ref = model(x).numpy()
        out = session.run(None, {"x": x.numpy()})[0]
        assert out.shape == ref.shape == (1, 5, math.ceil(h / 8), math.ceil(w / 8))
        assert abs(out - ref).max() < 1e-4
