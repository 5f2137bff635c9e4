"""Photometric/style randomisation of the source view: formulas, determinism, off = unchanged, bad options."""

import dataclasses

import pytest
import torch

from udaseg.config import AugmentConfig, ConfigError
from udaseg.data import photometric as P
from udaseg.engine.data import TrainView


def test_grayscale_and_channel_shuffle_formulas():
    img = torch.rand(3, 5, 7)
    g = P.grayscale(img)
    luma = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    assert all(torch.allclose(g[c], luma) for c in range(3))
    out = P.channel_shuffle(img, torch.tensor([2, 0, 1]))
    assert torch.equal(out, torch.stack([img[2], img[0], img[1]]))
    assert P.grayscale(img[None]).shape == (1, 3, 5, 7)


def reference_fda(img, style, beta):
    """Yang & Soatto's low_freq_mutate, written out with numpy on the fftshift-ed spectrum."""
    import numpy as np

    h, w = img.shape[-2:]
    b = int(beta * min(h, w))
    fi = np.fft.fftshift(np.fft.fft2(img.double().numpy()), axes=(-2, -1))
    fs = np.fft.fftshift(np.fft.fft2(style.double().numpy()), axes=(-2, -1))
    amp, pha = np.abs(fi), np.angle(fi)
    cy, cx = h // 2, w // 2
    amp[:, cy - b : cy + b + 1, cx - b : cx + b + 1] = np.abs(fs)[:, cy - b : cy + b + 1, cx - b : cx + b + 1]
    out = np.fft.ifft2(np.fft.ifftshift(amp * np.exp(1j * pha), axes=(-2, -1))).real
    return torch.from_numpy(out).clamp(0, 1).float()


@pytest.mark.parametrize("shape,beta", [((3, 16, 24), 0.1), ((3, 17, 31), 0.2), ((3, 9, 9), 0.05)])
def test_fda_matches_the_reference(shape, beta):
    gen = torch.Generator().manual_seed(0)
    img, style = torch.rand(shape, generator=gen), torch.rand(shape, generator=gen) * 0.5
    out = P.fda(img, style, beta)
    ref = reference_fda(img, style, beta)
    assert torch.allclose(out, ref, atol=1e-5), f"{(out - ref).abs().gt(1e-5).sum()} values differ"
    assert torch.equal(P.fda(img, style, 0.0), img)


def options(**kw):
    return dataclasses.replace(AugmentConfig(), **kw)


def test_randomize_is_deterministic_and_off_draws_nothing():
    img, style = torch.rand(3, 12, 20), torch.rand(3, 30, 40)
    opts = options(jitter=0.4, grayscale=0.5, blur=0.5, channel_shuffle=0.5, fda=0.5)
    a = P.randomize(img, opts, torch.Generator().manual_seed(3), style)
    b = P.randomize(img, opts, torch.Generator().manual_seed(3), style)
    assert torch.equal(a, b) and a.shape == img.shape and 0 <= float(a.min()) and float(a.max()) <= 1
    outs = {P.randomize(img, opts, torch.Generator().manual_seed(s), style).sum().item() for s in range(8)}
    assert len(outs) > 1  # the seed matters
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    assert torch.equal(P.randomize(img, AugmentConfig(), gen, None), img)
    assert torch.equal(gen.get_state(), state)  # nothing drawn when every option is off
    with pytest.raises(ValueError, match="fda"):
        P.randomize(img, options(fda=1.0), torch.Generator(), None)


class Images(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.items = [
            {"image": torch.rand(3, 24, 40, generator=g), "label": torch.randint(0, 4, (24, 40), generator=g)}
            for _ in range(n)
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_train_view_options():
    src, tgt = Images(3, 0), Images(4, 1)
    plain = TrainView(src, crop=(16, 16))
    off = TrainView(src, crop=(16, 16), photometric=AugmentConfig(), style_images=tgt)
    key = (1, 123, -1)
    assert torch.equal(plain[key]["image"], off[key]["image"])  # all options off: bit-identical to the plain view
    on = TrainView(src, crop=(16, 16), photometric=options(jitter=0.3, p_jitter=1.0, fda=1.0), style_images=tgt)
    a, b = on[key], on[key]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], plain[key]["label"])
    assert not torch.equal(a["image"], plain[key]["image"])
    with pytest.raises(ConfigError, match="augment.fda"):
        TrainView(src, crop=(16, 16), photometric=options(fda=1.0))
    with pytest.raises(ConfigError, match="augment.grayscale=2"):
        TrainView(src, crop=(16, 16), photometric=options(grayscale=2.0))
