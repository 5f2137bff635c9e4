"""A vehicle's recordings as datasets: camera topics of ROS 2 bags and video files, unlabelled.

    --target rosbag:drive.mcap:/camera/front/image_raw          # a topic of a bag (.mcap, .db3 or a bag folder)
    --target rosbag:drive.mcap                                    # the bag's only image topic
    --target rosbag:drive_bag/:/cam/image_raw/compressed:every=5  # every 5th frame
    --target video:dashcam.mp4:min_interval_s=0.5                 # at most one frame per 0.5 s

Options follow the path (and topic) as `:key=value` segments: `every=N` keeps frames 0, N, 2N, ... of the topic,
`min_interval_s=X` then keeps a frame only when it comes at least X seconds after the last kept one (bag receive
time, video presentation time), so that near-identical frames of a stopped car don't dominate. The same options
are keyword arguments of `rosbag()` / `video()`, i.e. the config entries `data.rosbag` / `data.video` where the
config has them (a spec's own options win).

The frames are indexed once when the dataset is built (timestamps/offsets; no image is decoded), so item i is one
seek away; readers are opened lazily in each process (DataLoader workers fork) and re-opened after a fork. Items
are `SegDataset` items whose label is all IGNORE_INDEX: they serve as training targets and as pictures for
pseudo-labels, never for evaluation or as a source (`labelled` is False, so the pre-run check refuses them there
with `unlabelled_reason`; `require_labels()` raises the same kind of error).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from udaseg.data.base import SegDataset
from udaseg.data.io import DatasetError
from udaseg.data.labels import CLASS_NAMES, IGNORE_INDEX


class RecordingError(DatasetError):
    """A bag or video cannot be read (missing topic, unsupported encoding, truncated file). Names file and topic."""


@dataclass
class Frame:
    """One camera frame. `index` is its position on the topic / in the video before subsampling."""

    index: int
    stamp_ns: int  # header stamp (bags) or presentation time (videos), ns
    log_time_ns: int  # bag receive time (videos: the presentation time)
    frame_id: str
    image: np.ndarray  # (H, W, 3) uint8 RGB


@dataclass
class Subsample:
    """Which frames to keep: every `every`-th, then only those `min_interval_s` after the last kept one."""

    every: int = 1
    min_interval_s: float = 0.0

    def __post_init__(self) -> None:
        try:
            self.every, self.min_interval_s = int(self.every), float(self.min_interval_s)
        except (TypeError, ValueError) as e:
            raise RecordingError(
                f"recording options: every must be an integer and min_interval_s a number ({e})"
            ) from e
        if self.every < 1 or self.min_interval_s < 0 or not np.isfinite(self.min_interval_s):
            raise RecordingError(
                f"recording options: expected every >= 1 and min_interval_s >= 0, found every="
                f"{self.every}, min_interval_s={self.min_interval_s}"
            )
        self._last: int | None = None

    def reset(self) -> None:
        self._last = None

    def keep(self, index: int, time_ns: int) -> bool:
        """Whether frame `index` (at `time_ns`) is kept; call in frame order."""
        if index % self.every:
            return False
        if self._last is not None and time_ns - self._last < self.min_interval_s * 1e9:
            return False
        self._last = time_ns
        return True

    def __str__(self) -> str:
        parts = ([f"every={self.every}"] if self.every > 1 else []) + (
            [f"min_interval_s={self.min_interval_s:g}"] if self.min_interval_s else []
        )
        return ", ".join(parts) or "all frames"


OPTION_KEYS = ("every", "min_interval_s")


def split_options(text: str, kind: str) -> tuple[list[str], dict[str, str]]:
    """'path:/topic:every=5' -> (['path', '/topic'], {'every': '5'}). Trailing `key=value` segments are options."""
    parts = text.split(":")
    options: dict[str, str] = {}
    while len(parts) > 1 and "=" in parts[-1]:
        key, _, value = parts.pop().partition("=")
        if key.strip() not in OPTION_KEYS:
            raise RecordingError(f"{kind} spec {text!r}: unknown option {key.strip()!r}; expected {OPTION_KEYS}")
        options[key.strip()] = value.strip()
    return parts, options


class RecordingDataset(SegDataset):
    """Frames of one source (a bag topic or a video) as unlabelled `SegDataset` items (whole frames; the training
    crops are `TrainView`'s)."""

    def __init__(self, source, frames: list, *, name: str, split: str) -> None:
        files = [(f"{source.describe()} frame {f.index}", None) for f in frames]
        super().__init__(
            files,
            name=name,
            root=str(source.path),
            split=split,
            lut=np.arange(256, dtype=np.int16),
            class_names=CLASS_NAMES,
            unlabelled_reason=f"{source.describe()} is a recording: it has no labels",
        )
        self.source, self.frames = source, frames  # frames: the source's locators, picklable

    def __repr__(self) -> str:
        return f"RecordingDataset({self.name}, {self.source.describe()}, n={len(self)}, unlabelled)"

    def describe(self) -> str:
        return f"{self.name}:{self.source.describe()} (split {self.split})"

    def require_labels(self, what: str = "evaluation") -> None:
        """Raise the error a use that needs labels (evaluation, a source domain) should give."""
        raise DatasetError(
            f"{self.source.describe()} has no labels, so it cannot be used for {what}: give a labelled "
            f"validation set (data.val=cityscapes:ROOT, folder:ROOT with masks), or train without "
            f"evaluation (--no-eval)"
        )

    def frame(self, i: int) -> Frame:
        return self.source.read(self.frames[i])

    def verify_item(self, i: int) -> tuple[int, int]:
        """(H, W) of frame i, decoded (the pre-run check's counterpart of reading an image file)."""
        return self.frame(i).image.shape[:2]

    def load_label(self, i: int) -> np.ndarray:
        h, w = self.verify_item(i)
        return np.full((h, w), IGNORE_INDEX, dtype=np.uint8)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image = self.frame(i).image  # (H, W, 3) uint8
        return image, np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        item["name"] = f"frame{self.frames[int(i)].index:06d}"
        return item


def build(source, options: dict, spec_options: dict[str, str], *, name: str, split: str) -> RecordingDataset:
    """Index `source` with the merged subsampling options (the spec's win) and wrap it as a dataset."""
    sub = Subsample(**{**{k: v for k, v in options.items() if v is not None}, **spec_options})
    frames, fault = source.index(sub)
    if fault:
        import warnings

        from udaseg.data.base import DatasetWarning

        warnings.warn(f"{fault}; using the {len(frames)} frames before it", DatasetWarning, stacklevel=3)
    if not frames:
        why = fault or (
            "it holds no readable frames (empty or damaged)"
            if sub.every == 1 and not sub.min_interval_s
            else f"none is left after subsampling ({sub})"
        )
        raise RecordingError(f"{source.describe()}: no frames to use: {why}")
    return RecordingDataset(source, frames, name=name, split=split)


class ProcessLocal:
    """A per-process handle (reader, decoder) and its lock: re-opened in a forked DataLoader worker, dropped when
    pickled. Readers share one file position, so threads (the pre-run check reads with several) take `lock()`."""

    def __init__(self) -> None:
        self._handle, self._pid = None, None
        self._lock, self._lock_pid = None, None

    def lock(self) -> threading.RLock:
        if self._lock is None or self._lock_pid != os.getpid():  # a fresh lock after a fork, never a copied one
            self._lock, self._lock_pid = threading.RLock(), os.getpid()
        return self._lock

    def get(self, opener):
        with self.lock():
            if self._handle is None or self._pid != os.getpid():
                self._handle, self._pid = opener(), os.getpid()
            return self._handle

    def close(self, closer=lambda h: None) -> None:
        with self.lock():
            if self._handle is not None and self._pid == os.getpid():
                closer(self._handle)
            self._handle, self._pid = None, None

    def __getstate__(self):
        return {}

    def __setstate__(self, state) -> None:
        self.__init__()


def rosbag(
    root: str | Path, split: str = "train", every: int | None = None, min_interval_s: float | None = None
) -> RecordingDataset:
    """`rosbag:PATH[:TOPIC][:every=N][:min_interval_s=X]` (see the module docstring)."""
    from udaseg.data.rosbag import BagSource

    (path, *rest), spec_options = split_options(str(root), "rosbag")
    topic = rest[-1] if rest else None
    path = ":".join([path, *rest[:-1]]) if rest else path
    if topic is not None and not topic.startswith("/"):  # a ':' inside the path, no topic given
        path, topic = f"{path}:{topic}", None
    options = {"every": every, "min_interval_s": min_interval_s}
    return build(BagSource(path, topic), options, spec_options, name="rosbag", split=split)


def video(
    root: str | Path, split: str = "train", every: int | None = None, min_interval_s: float | None = None
) -> RecordingDataset:
    """`video:PATH[:every=N][:min_interval_s=X]` (see the module docstring)."""
    from udaseg.data.video import VideoSource

    parts, spec_options = split_options(str(root), "video")
    options = {"every": every, "min_interval_s": min_interval_s}
    return build(VideoSource(":".join(parts)), options, spec_options, name="video", split=split)


def iter_kept(frames: Iterator, sub: Subsample) -> Iterator:
    """Frames of a stream that `sub` keeps (each item needs `.index` and `.log_time_ns`)."""
    sub.reset()
    for f in frames:
        if sub.keep(f.index, f.log_time_ns):
            yield f
