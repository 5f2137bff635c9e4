"""Pure transforms: shapes, determinism given a generator, inputs untouched."""

import pytest
import torch

from udaseg.data import transforms as T


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def pair():
    g = gen(1)
    return torch.rand(3, 17, 29, generator=g), torch.randint(0, 19, (17, 29), generator=g)


def test_resize_shapes_and_identity(pair):
    img, lbl = pair
    assert T.resize(img, (8, 10)).shape == (3, 8, 10)
    assert T.resize(img[None].expand(2, -1, -1, -1), 12).shape == (2, 3, 12, 12)
    assert T.resize(img, (17, 29)) is img
    big = T.resize_label(lbl, (34, 58))
    assert big.dtype == lbl.dtype and torch.equal(big[::2, ::2], lbl)  # nearest: values preserved
    assert set(T.resize_label(lbl, (5, 7)).unique().tolist()) <= set(lbl.unique().tolist())
    assert T.resize_label(lbl[None], (5, 7)).shape == (1, 5, 7)


def test_hflip(pair):
    img, lbl = pair
    assert torch.equal(T.hflip(T.hflip(img)), img) and torch.equal(T.hflip(lbl)[:, 0], lbl[:, -1])


@pytest.mark.parametrize("crop, scale", [((8, 8), None), ((8, 12), (0.5, 2.0)), ((40, 40), None), (5, (1.0, 1.0))])
def test_random_scale_crop_shapes_deterministic_pure(pair, crop, scale):
    img, lbl = pair
    img0, lbl0 = img.clone(), lbl.clone()
    a = T.random_scale_crop(img, lbl, crop, scale, gen(5))
    b = T.random_scale_crop(img, lbl, crop, scale, gen(5))
    h, w = (crop, crop) if isinstance(crop, int) else crop
    assert a[0].shape == (3, h, w) and a[1].shape == (h, w)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(img, img0) and torch.equal(lbl, lbl0)


def test_crop_pads_with_ignore(pair):
    img, lbl = pair
    _, out = T.random_scale_crop(img, lbl, (40, 40), None, gen())
    assert (out == 255).sum() == 40 * 40 - 17 * 29


def test_color_jitter_and_blur(pair):
    img = pair[0]
    x = img[None].repeat(4, 1, 1, 1)
    y = T.color_jitter(x, 0.3, gen(2))
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert not torch.equal(y[0], y[1])  # each image its own factors
    assert torch.equal(y, T.color_jitter(x, 0.3, gen(2)))
    assert torch.equal(T.color_jitter(x, 0.3, gen(2), p=0.0), x)
    assert torch.allclose(T.color_jitter(img, 0.0, gen()), img, atol=1e-5)
    flat = torch.full((3, 9, 9), 0.4)
    assert torch.allclose(T.gaussian_blur(flat, 1.5), flat, atol=1e-6)
    blurred = T.gaussian_blur(x, torch.tensor([0.0, 1.0, 2.0, 0.5]))
    assert torch.equal(blurred[0], x[0]) and blurred[2].std() < x[2].std()
    assert torch.allclose(blurred.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.03)


def test_strong_view_batch(pair):
    x = pair[0][None].repeat(3, 1, 1, 1)
    a = T.strong_view(x, gen(4), p_jitter=1.0)
    assert a.shape == x.shape and torch.equal(a, T.strong_view(x, gen(4), p_jitter=1.0))
    assert T.strong_view(pair[0], gen(4)).shape == pair[0].shape


def test_class_mix_masks_pick_half_of_present_classes():
    labels = torch.tensor([[[0, 1, 2, 3], [4, 255, 0, 1]], [[5, 5, 255, 255], [5, 5, 6, 6]]])
    masks = T.class_mix_masks(labels, gen(0))
    assert masks.shape == labels.shape and masks.dtype == torch.bool
    assert not masks[labels == 255].any()
    chosen0 = labels[0][masks[0]].unique()
    assert len(chosen0) == 3  # ceil(5 / 2)
    for c in range(5):  # a class is taken whole or not at all
        assert masks[0][labels[0] == c].all() or not masks[0][labels[0] == c].any()
    assert len(labels[1][masks[1]].unique()) == 1
    assert torch.equal(masks, T.class_mix_masks(labels, gen(0)))


def test_mix_images_and_labels():
    masks = torch.tensor([[[True, False], [False, True]]])
    a_img, b_img = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    mixed = T.mix(masks, a_img, b_img)
    assert mixed.shape == (1, 3, 2, 2) and torch.equal(mixed[0, 1], masks[0].float())
    mixed_lbl = T.mix(masks, torch.full((1, 2, 2), 7), torch.full((1, 2, 2), 3))
    assert mixed_lbl.tolist() == [[[7, 3], [3, 7]]]
