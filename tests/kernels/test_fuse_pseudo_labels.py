"""fuse_pseudo_labels: labels and confidence against the float64 reference, ties, thresholds, misuse."""

from __future__ import annotations

import pytest
import torch

from udaseg.kernels import fuse_pseudo_labels

# (B, C, H, W): 1 x 1, primes, more pixels than one interpreter block (64), 19 classes (three class tiles under the
# interpreter, the last partial), 40 classes (more than a GPU's 32-class tile).
SHAPES = [(1, 1, 1, 1), (2, 7, 13, 11), (3, 19, 5, 67), (1, 40, 3, 70)]


def _data(b, c, h, w, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.randn(b, c, h, w, generator=g).mul(2).softmax(1).to(dtype)
    instance = torch.randn(b, c, h, w, generator=g).mul(2).softmax(1).to(dtype)
    thresholds = torch.rand(c, generator=g) * 0.6
    return probs, instance, thresholds


@pytest.mark.parametrize("b,c,h,w", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_instance", [True, False])
def test_matches_float64_reference(impl, b, c, h, w, dtype, with_instance, assert_close):
    probs, instance, thresholds = _data(b, c, h, w, dtype)
    instance = instance if with_instance else None
    labels, confidence = fuse_pseudo_labels(probs, instance, 0.3, thresholds, impl=impl)
    ref_labels, ref_conf = fuse_pseudo_labels(
        probs.double(), instance.double() if with_instance else None, 0.3, thresholds.double(), impl="torch"
    )
    assert labels.dtype == torch.int64 and confidence.dtype == torch.float32
    assert labels.shape == confidence.shape == (b, h, w)
    assert_close(confidence, ref_conf, 1e-6, 1e-6, "confidence")
    # Labels must agree wherever float32 rounding cannot decide: a clear top-2 gap and a clear threshold gap.
    fused = probs.double() if instance is None else 0.3 * probs.double() + 0.7 * instance.double()
    top2 = fused.topk(min(2, c), dim=1).values
    clear = (top2[:, 0] - top2[:, -1] > 1e-5) | (c == 1)
    clear &= (ref_conf - thresholds.double()[fused.argmax(1)]).abs() > 1e-5
    mismatch = (labels != ref_labels) & clear
    assert not mismatch.any(), f"{mismatch.sum().item()} of {clear.sum().item()} clear labels differ"
    assert clear.float().mean() > 0.9


def test_ties_pick_the_smaller_class(impl):
    probs = torch.full((2, 5, 3, 4), 0.2)
    probs[:, 3] = 0.2  # all equal
    labels, confidence = fuse_pseudo_labels(probs, None, 1.0, torch.zeros(5), impl=impl)
    assert torch.equal(labels, torch.zeros(2, 3, 4, dtype=torch.int64))
    assert torch.allclose(confidence, torch.full((2, 3, 4), 0.2))
    probs[:, 0] = 0.1  # now classes 1..4 tie
    labels, _ = fuse_pseudo_labels(probs, probs.clone(), 0.5, torch.zeros(5), impl=impl)
    assert (labels == 1).all()


def test_ties_across_class_tiles_pick_the_smaller_class(impl):
    """The Triton kernel reads the classes in tiles (8 under the interpreter): a maximum shared by a class of the
    first tile and one of a later tile must still give the smaller class, and a later tile's larger maximum wins."""
    probs = torch.full((1, 19, 2, 3), 0.01)
    probs[:, 2] = probs[:, 10] = probs[:, 17] = 0.3  # tiles 0, 1 and 2 under the interpreter
    labels, confidence = fuse_pseudo_labels(probs, None, 1.0, torch.zeros(19), impl=impl)
    assert (labels == 2).all() and torch.allclose(confidence, torch.full_like(confidence, 0.3))
    probs[:, 17] = 0.31  # the last, partial tile holds the maximum
    labels, _ = fuse_pseudo_labels(probs, None, 1.0, torch.zeros(19), impl=impl)
    assert (labels == 17).all()


@pytest.mark.parametrize("ignore_index", [255, -1])
def test_all_pixels_under_threshold_are_ignored(impl, ignore_index):
    probs, instance, _ = _data(2, 4, 6, 5)
    labels, confidence = fuse_pseudo_labels(probs, instance, 0.5, torch.full((4,), 1.01), ignore_index, impl=impl)
    assert (labels == ignore_index).all()
    assert (confidence > 0).all(), "the confidence is kept where the label is ignored"


def test_alpha_one_is_probs_alone(impl):
    probs, instance, thresholds = _data(2, 6, 7, 9)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            fuse_pseudo_labels(probs, instance, 1.0, thresholds, impl=impl),
            fuse_pseudo_labels(probs, None, 0.0, thresholds, impl=impl),
        )
    )


@pytest.mark.parametrize(
    "key, value, name",
    [
        ("probs", "int", "probs"),
        ("probs", "3d", "probs"),
        ("instance_probs", "short", "instance_probs"),
        ("thresholds", "short", "thresholds"),
        ("alpha", 1.5, "alpha"),
        ("alpha", float("nan"), "alpha"),
        ("ignore_index", 2.5, "ignore_index"),
    ],
)
def test_misuse_raises_value_error_naming_the_argument(key, value, name):
    probs, instance, thresholds = _data(2, 4, 3, 5)
    args = {"probs": probs, "instance_probs": instance, "alpha": 0.5, "thresholds": thresholds, "ignore_index": 255}
    if isinstance(value, str):
        value = {"int": probs.long(), "3d": probs[0], "short": args[key][..., :-1]}[value]
    args[key] = value
    with pytest.raises(ValueError, match=name):
        fuse_pseudo_labels(**args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("c", [19, 40])  # one class tile; two, the second partial
def test_gpu_triton_matches_reference(dtype, c, assert_close):
    probs, instance, thresholds = (t.cuda() for t in _data(2, c, 128, 257, dtype))
    labels, confidence = fuse_pseudo_labels(probs, instance, 0.3, thresholds, impl="triton")
    ref_labels, ref_conf = fuse_pseudo_labels(probs, instance, 0.3, thresholds, impl="torch")
    assert_close(confidence, ref_conf, 1e-6, 1e-6, "confidence")
    assert (labels != ref_labels).float().mean() < 1e-4  # FMA contraction may flip exact near-ties


def test_gpu_configs_keep_the_classes_inside_each_thread():
    """The autotune prune keeps the tiles whose warps all lie along the pixels (16 bytes of pixels per thread), so
    the max over the classes never goes through shared memory: 4 float32 or 8 bfloat16 pixels a thread."""
    triton = pytest.importorskip("triton", reason="the prune works on triton.Config objects")
    from udaseg.kernels.fuse_pseudo_labels import _in_thread_classes

    rows = [(512, 4), (1024, 8), (1024, 4), (2048, 8), (256, 4)]
    cfgs = [triton.Config({"CLASS_BLOCK": 8, "BLOCK": b}, num_warps=w) for b, w in rows]

    def kept(dtype):
        named = {"p_ptr": torch.ones(1, dtype=dtype)}
        return [(c.kwargs["BLOCK"], c.num_warps) for c in _in_thread_classes(cfgs, named)]

    assert kept(torch.float32) == [(512, 4), (1024, 8), (1024, 4), (2048, 8)]
    assert kept(torch.bfloat16) == kept(torch.float16) == [(1024, 4), (2048, 8)]
