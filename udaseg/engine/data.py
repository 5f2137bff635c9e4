"""Training data streams whose content is a pure function of (seed, iteration, rank).

Every image drawn at iteration t, slot b is chosen, cropped and flipped from a random stream seeded by
(seed, stream, rank, t, b). Nothing depends on how many workers ran or on an epoch counter, so a run resumed at
iteration t sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from udaseg.config import ConfigError
from udaseg.data import photometric as P
from udaseg.data import transforms as T
from udaseg.data.rcs import rcs_probabilities

SOURCE_STREAM, TARGET_STREAM = 1, 2


class StepSampler(Sampler):
    """Yields (dataset index, augmentation seed, class to crop around or -1) for iterations [start, end).

    With `class_probs`/`class_images` (rare-class sampling), a class c is drawn from class_probs first, then an
    image among class_images[c] (DAFormer); otherwise images are drawn uniformly.
    """

    def __init__(
        self,
        num_images: int,
        batch_size: int,
        start: int,
        end: int,
        seed: int,
        stream: int,
        rank: int = 0,
        class_probs: Sequence[float] | None = None,
        class_images: Sequence[Sequence[int]] | None = None,
    ):
        if num_images == 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.batch_size, self.start, self.end = num_images, batch_size, start, end
        self.seed, self.stream, self.rank = seed, stream, rank
        self.class_probs = None if class_probs is None else np.asarray(class_probs, dtype=np.float64)
        self.class_images = class_images

    def draw(self, iteration: int, slot: int) -> tuple[int, int, int]:
        rng = np.random.default_rng([self.seed, self.stream, self.rank, iteration, slot])
        aug_seed = int(rng.integers(2**62))
        if self.class_probs is None:
            return int(rng.integers(self.n)), aug_seed, -1
        c = int(rng.choice(len(self.class_probs), p=self.class_probs))
        images = self.class_images[c]
        return int(images[rng.integers(len(images))]), aug_seed, c

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for t in range(self.start, self.end):
            for b in range(self.batch_size):
                yield self.draw(t, b)

    def __len__(self) -> int:
        return (self.end - self.start) * self.batch_size


class TrainView(Dataset):
    """Random scale + crop + flip of a dataset's items, driven by the seed the sampler hands over.

    With a class to crop around (rare-class sampling), up to 10 crops are tried until one holds at least
    `min_class_pixels` pixels of that class (DAFormer's re-crop rule). With `photometric` (a config.AugmentConfig
    with some option on), the crop is then colour/style randomised (udaseg/data/photometric.py) from the same seed;
    FDA takes its amplitude from an image of `style_images` (the target dataset) drawn from that seed too.
    """

    def __init__(
        self,
        dataset: Dataset,
        crop: Sequence[int],
        scale_range: Sequence[float] = (1.0, 1.0),
        resize: Sequence[int] = (),
        flip: bool = True,
        min_class_pixels: int = 0,
        photometric=None,
        style_images: Dataset | None = None,
    ):
        self.dataset, self.crop, self.scale_range = dataset, tuple(crop), tuple(scale_range)
        self.resize, self.flip, self.min_class_pixels = tuple(resize), flip, min_class_pixels
        self.photometric = photometric if P.enabled(photometric) else None
        self.style_images = style_images
        if self.photometric is not None:
            bad = P.check(self.photometric)
            if self.photometric.fda > 0 and (style_images is None or len(style_images) == 0):
                bad.append(f"augment.fda={self.photometric.fda}: FDA needs target images to take the style from")
            if bad:
                raise ConfigError("; ".join(bad))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        index, seed, cls = key
        item = self.dataset[index]
        image, label = item["image"], item["label"]  # (3, H, W) float, (H, W) int64
        if self.resize:
            image, label = T.resize(image, self.resize), T.resize_label(label, self.resize)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(10 if cls >= 0 else 1):
            img, lbl = T.random_scale_crop(image, label, self.crop, self.scale_range, gen)
            if cls < 0 or int((lbl == cls).sum()) >= self.min_class_pixels:
                break
        if self.flip and torch.rand((), generator=gen) < 0.5:
            img, lbl = T.hflip(img), T.hflip(lbl)
        if self.photometric is not None:  # after the geometry: with every option off, no draw changes
            img = P.randomize(img, self.photometric, gen, self._style(gen))
        return {"image": img, "label": lbl, "index": index}

    def _style(self, gen: torch.Generator) -> torch.Tensor | None:
        """A target image for FDA, drawn from the crop's generator (None when FDA is off)."""
        if self.photometric.fda <= 0:
            return None
        return self.style_images[int(torch.randint(len(self.style_images), (), generator=gen))]["image"]


def loader(view: TrainView, sampler: StepSampler, workers: int, pin_memory: bool) -> Iterator[dict]:
    """An iterator of collated batches, one per iteration of the sampler's range."""
    return iter(
        DataLoader(
            view,
            batch_size=sampler.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )
    )


def rcs_tables(counts: np.ndarray, temperature: float, min_pixels: int) -> tuple[list[float], list[list[int]]]:
    """Rare-class sampling tables from per-image class pixel counts (num_images, C).

    P(c) = softmax((1 - f_c) / T) (DAFormer, mmseg/datasets/uda_dataset.py), restricted to the classes that some
    image holds with more than min_pixels pixels, and for each class the images that do.
    """
    counts = np.asarray(counts)
    images = [np.flatnonzero(counts[:, c] > min_pixels).tolist() for c in range(counts.shape[1])]
    usable = np.array([len(i) > 0 for i in images])
    if not usable.any():
        raise ValueError(f"rare-class sampling: no image has more than {min_pixels} pixels of any class")
    probs = np.where(usable, rcs_probabilities(counts, temperature), 0.0)
    return (probs / probs.sum()).tolist(), images
