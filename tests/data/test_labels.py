"""Taxonomy, lookup tables, protocols, palette."""

import numpy as np
import pytest
import torch

from udaseg.data import labels as L


def test_taxonomy_and_palette():
    assert len(L.CLASS_NAMES) == len(L.PALETTE) == L.NUM_CLASSES == 19
    assert L.CLASS_NAMES[0] == "road" and L.CLASS_NAMES[13] == "car" and L.CLASS_NAMES[18] == "bicycle"
    assert L.PALETTE[0] == (128, 64, 128) and L.PALETTE[10] == (70, 130, 180)


@pytest.mark.parametrize(
    "raw, train",
    [
        (7, 0),
        (8, 1),
        (11, 2),
        (17, 5),
        (23, 10),
        (24, 11),
        (26, 13),
        (31, 16),
        (33, 18),
        (0, 255),
        (6, 255),
        (9, 255),
        (29, 255),
        (255, 255),
    ],
)
def test_cityscapes_lut(raw, train):
    assert L.CITYSCAPES_LUT[raw] == train
    assert L.GTA5_LUT[raw] == train


@pytest.mark.parametrize(
    "raw, train",
    [
        (3, 0),
        (4, 1),
        (2, 2),
        (21, 3),
        (5, 4),
        (7, 5),
        (15, 6),
        (9, 7),
        (6, 8),
        (1, 10),
        (10, 11),
        (17, 12),
        (8, 13),
        (19, 15),
        (12, 17),
        (11, 18),
        (16, 9),
        (18, 14),
        (20, 16),
        (0, 255),
        (13, 255),
        (14, 255),
        (22, 255),
    ],
)
def test_synthia_lut(raw, train):
    assert L.SYNTHIA_LUT[raw] == train


def test_every_train_id_reachable():
    for lut in (L.CITYSCAPES_LUT, L.SYNTHIA_LUT, L.TRAINID_LUT):
        assert set(range(19)) <= set(lut.tolist())


def test_apply_lut_counts_unknown_values():
    raw = np.array([[7, 8, 40], [300, 0, 255]])
    out, n_unknown, values = L.apply_lut(raw, L.CITYSCAPES_LUT)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 255], [255, 255, 255]])
    assert n_unknown == 2 and values == [40, 300]


def test_apply_lut_16bit():
    raw = np.array([[3, 21, 60000]], dtype=np.int32)
    out, n_unknown, values = L.apply_lut(raw, L.SYNTHIA_LUT)
    np.testing.assert_array_equal(out, [[0, 3, 255]])
    assert n_unknown == 1 and values == [60000]


def test_protocols():
    assert L.PROTOCOLS[19] == tuple(range(19))
    assert L.PROTOCOLS[16] == (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
    assert L.PROTOCOLS[13] == (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
    assert set(L.PROTOCOLS[13]) <= set(L.PROTOCOLS[16])
    assert not {9, 14, 16} & set(L.PROTOCOLS[16])  # SYNTHIA lacks terrain, truck, train
    assert L.protocol_classes(13) == L.PROTOCOLS[13]
    with pytest.raises(ValueError, match="protocol"):
        L.protocol_classes(7)


def test_colorize_numpy_and_torch():
    lbl = np.array([[0, 13], [255, 18]])
    out = L.colorize(lbl)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == L.PALETTE[0] and tuple(out[1, 1]) == L.PALETTE[18] and tuple(out[1, 0]) == (0, 0, 0)
    np.testing.assert_array_equal(L.colorize(torch.tensor(lbl)[None]), out[None])
