"""Frames of a video file (mp4, mkv, avi, mov, ... whatever FFmpeg reads) through PyAV (`pip install udaseg[vehicle]`).

The first video stream is used. Indexing demuxes the packets once without decoding (presentation timestamps and
keyframes), so building a dataset of a long drive is quick. Reading frame i seeks to the keyframe before it and
decodes forward; reading the next frames of the same group of pictures goes on from there, so sequential access
decodes each frame once. Random access costs up to one group of pictures of decoding: for a video with long ones
subsample (`every=N`) or re-encode with a short keyframe interval (`ffmpeg -i in.mp4 -g 15 out.mp4`).

A file cut short (a dash-cam losing power) is read up to the cut: the frames before it are used, and the cut is
reported with the file's name. An mp4 whose index ('moov' atom) was never written cannot be read at all; remux a
damaged one with `ffmpeg -err_detect ignore_err -i in.mp4 -c copy out.mkv`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from udaseg.data.recordings import Frame, ProcessLocal, RecordingError, Subsample

INSTALL = "reading videos needs PyAV: pip install 'udaseg[vehicle]' (or pip install av)"


def import_av():
    try:
        import av
    except ImportError as e:
        raise RecordingError(INSTALL) from e
    return av


@dataclass(frozen=True)
class VideoFrame:
    """Frame `index` (presentation order) at `pts` (stream time base); `key` is the index of its keyframe."""

    index: int
    pts: int
    log_time_ns: int
    key: int


class VideoSource:
    """The first video stream of a file: indexed, random access, or a stream in order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise RecordingError(f"{self.path}: no such video file")
        av = import_av()
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise RecordingError(f"{self.path}: no video stream in this file")
                stream = container.streams.video[0]
                self.time_base = Fraction(stream.time_base)
                rate = stream.average_rate or stream.guessed_rate
                self.rate = Fraction(rate) if rate else Fraction(30)
                self.codec = stream.codec_context.name
        except av.error.FFmpegError as e:
            raise RecordingError(
                f"{self.path}: not a readable video ({e}); if it was cut short before its index "
                f"was written, it cannot be read"
            ) from e
        self.topic = None
        self._dec = ProcessLocal()
        self._pts_index: dict[int, int] = {}

    def describe(self) -> str:
        return f"{self.path} (video)"

    def time_ns(self, pts: int) -> int:
        return int(round(pts * self.time_base * 1_000_000_000))

    def fault(self, why: str, count: int) -> RecordingError:
        return RecordingError(f"{self.path}: the video is truncated or damaged after {count} frames: {why}")

    def scan(self) -> tuple[list[int], list[int], str | None]:
        """(sorted presentation timestamps, keyframe timestamps, fault) from the packets, nothing decoded."""
        av = import_av()
        pts, keys, fault = [], [], None
        try:
            with av.open(str(self.path)) as container:
                for packet in container.demux(container.streams.video[0]):
                    if packet.pts is None or packet.size == 0:
                        continue
                    pts.append(int(packet.pts))
                    if packet.is_keyframe:
                        keys.append(int(packet.pts))
                short = self.ends_early(container, max(pts, default=None))
        except av.error.FFmpegError as e:
            fault = str(self.fault(str(e), len(pts)))
        else:
            fault = str(self.fault(short, len(pts))) if short else None
        return sorted(pts), sorted(keys), fault

    def ends_early(self, container, last_pts: int | None) -> str | None:
        """Why the frames stop before the duration the file states (a cut file), or None."""
        stream = container.streams.video[0]
        if container.duration is None or last_pts is None:
            return None
        start = stream.start_time or 0
        end = float((last_pts - start) * self.time_base + 1 / self.rate)
        stated = container.duration / 1e6
        if end < stated - 1.5 / float(self.rate):
            return f"its frames end at {end:.2f} s but the file states {stated:.2f} s (cut short?)"
        return None

    def index(self, sub: Subsample) -> tuple[list[VideoFrame], str | None]:
        pts, keys, fault = self.scan()
        self._pts_index = {p: i for i, p in enumerate(pts)}
        key_of = [bisect.bisect_right(keys, p) - 1 for p in pts]  # position in `keys`, -1 before the first
        key_index = [self._pts_index[keys[k]] if k >= 0 else 0 for k in key_of]
        sub.reset()
        frames = [
            VideoFrame(i, p, self.time_ns(p), key_index[i]) for i, p in enumerate(pts) if sub.keep(i, self.time_ns(p))
        ]
        return frames, fault

    def _opener(self):
        av = import_av()
        container = av.open(str(self.path))
        return {"container": container, "stream": container.streams.video[0], "frames": None, "last": -1}

    def read(self, ref: VideoFrame) -> Frame:
        with self._dec.lock():  # one decoder state per process
            return self._read(ref)

    def _read(self, ref: VideoFrame) -> Frame:
        av = import_av()
        state = self._dec.get(self._opener)
        sequential = state["frames"] is not None and state["last"] < ref.index and ref.key <= state["last"] + 1
        try:
            if not sequential:
                state["container"].seek(ref.pts, stream=state["stream"], backward=True, any_frame=False)
                state["frames"] = state["container"].decode(state["stream"])
            for frame in state["frames"]:
                if frame.pts is None:
                    continue
                state["last"] = self._pts_index.get(int(frame.pts), state["last"] + 1)
                if frame.pts >= ref.pts:
                    return self.frame(ref.index, frame)
        except av.error.FFmpegError as e:
            state["frames"] = None
            raise RecordingError(f"{self.describe()} frame {ref.index}: cannot decode it ({e})") from e
        state["frames"] = None
        raise RecordingError(f"{self.describe()} frame {ref.index}: the video ends before it (pts {ref.pts})")

    def frame(self, index: int, frame) -> Frame:
        t = self.time_ns(int(frame.pts or 0))
        return Frame(index, t, t, "", np.ascontiguousarray(frame.to_ndarray(format="rgb24")))

    def stream(self, sub: Subsample) -> Iterator[Frame]:
        """Kept frames in order (every frame is decoded: later ones depend on it); a fault raises RecordingError."""
        av = import_av()
        sub.reset()
        i = 0
        try:
            with av.open(str(self.path)) as container:
                last = None
                for frame in container.decode(container.streams.video[0]):
                    last = frame.pts if frame.pts is not None else last
                    t = self.time_ns(int(frame.pts or 0))
                    if sub.keep(i, t):
                        yield self.frame(i, frame)
                    i += 1
                short = self.ends_early(container, last)
        except av.error.FFmpegError as e:
            raise self.fault(str(e), i) from e
        if short:
            raise self.fault(short, i)

    def close(self) -> None:
        self._dec.close(lambda s: s["container"].close())
