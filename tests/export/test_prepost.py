"""export/prepost.py against PyTorch: the Python reference of the runtime's pre/post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from udaseg.data.labels import PALETTE
from udaseg.export import prepost

SIZES = [  # (in_h, in_w, out_h, out_w): down, up, identity, 1x1, primes, camera -> network
    (64, 128, 32, 64),
    (37, 53, 64, 128),
    (7, 5, 7, 5),
    (1, 1, 3, 4),
    (97, 131, 13, 17),
    (256, 512, 128, 256),
]


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("in_h, in_w, out_h, out_w", SIZES)
def test_preprocess_matches_torch_bilinear(in_h, in_w, out_h, out_w):
    img = _image(in_h, in_w)
    ours = prepost.preprocess(img, out_h, out_w)
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    ref = F.interpolate(t, size=(out_h, out_w), mode="bilinear", align_corners=False)[0] / 255
    assert ours.shape == (3, out_h, out_w) and ours.dtype == np.float32
    assert np.abs(ours - ref.numpy()).max() < 1e-6


def test_preprocess_same_size_is_exact_and_normalises():
    img = _image(9, 11)
    assert np.array_equal(prepost.preprocess(img, 9, 11), img.transpose(2, 0, 1).astype(np.float32) / 255)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = prepost.preprocess(img, 9, 11, mean, std)
    ref = (img.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    assert np.allclose(out, ref.transpose(2, 0, 1), atol=1e-6)
    u8 = prepost.preprocess_u8(img, 9, 11)
    assert u8.dtype == np.uint8 and np.array_equal(u8, img.transpose(2, 0, 1))


def test_preprocess_rejects_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        prepost.preprocess(np.zeros((4, 4, 3), np.float32), 2, 2)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        prepost.preprocess(np.zeros((4, 4), np.uint8), 2, 2)


@pytest.mark.parametrize("shape", [(19, 13, 17), (1, 1, 1), (2, 5, 7), (256, 2, 3)])
def test_argmax_and_confidence_match_torch(shape):
    logits = np.random.default_rng(1).normal(0, 4, shape).astype(np.float32)
    logits[:, 0, 0] = 3.0  # a tie: the first index wins, as in numpy/PyTorch
    assert np.array_equal(prepost.argmax(logits), logits.argmax(0).astype(np.uint8))
    assert prepost.argmax(logits, np.int32).dtype == np.int32
    conf = prepost.confidence(logits)
    ref = torch.softmax(torch.from_numpy(logits).double(), 0).max(0).values.numpy()
    assert conf.dtype == np.float32 and np.abs(conf - ref).max() < 1e-6


def test_exp_neg_accuracy():
    x = -np.abs(np.random.default_rng(2).normal(0, 20, 10000)).astype(np.float32)
    x = x[x > -87]
    rel = np.abs(prepost.exp_neg(x).astype(np.float64) / np.exp(x.astype(np.float64)) - 1)
    assert rel.max() < 3e-7
    assert prepost.exp_neg(np.float32([-1000, 0]))[1] == 1.0


def test_colorize_palette_and_ignore():
    labels = np.array([[0, 18, 255], [19, 5, 1]], dtype=np.uint8)
    rgb = prepost.colorize(labels)
    assert tuple(rgb[0, 0]) == PALETTE[0] and tuple(rgb[0, 1]) == PALETTE[18]
    assert tuple(rgb[0, 2]) == (0, 0, 0) and tuple(rgb[1, 0]) == (0, 0, 0)  # ignore and unknown ids are black


@pytest.mark.parametrize("h, w, oh, ow", [(33, 45, 66, 90), (33, 45, 17, 23), (5, 7, 5, 7), (1, 1, 4, 3)])
def test_resize_nearest_matches_torch(h, w, oh, ow):
    labels = np.random.default_rng(3).integers(0, 19, (h, w), dtype=np.uint8)
    ref = F.interpolate(torch.from_numpy(labels)[None, None].float(), size=(oh, ow), mode="nearest")[0, 0]
    assert np.array_equal(prepost.resize_nearest(labels, oh, ow), ref.byte().numpy())


def test_postprocess_bundle():
    logits = np.random.default_rng(4).normal(size=(19, 8, 9)).astype(np.float32)
    out = prepost.postprocess(logits, with_confidence=True)
    assert out["labels"].shape == (8, 9) and out["color"].shape == (8, 9, 3) and out["confidence"].shape == (8, 9)
