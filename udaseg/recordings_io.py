"""Writing segmentation results next to a recording: a ROS 2 bag (one MCAP or sqlite3 file) or a video.

    with BagWriter("seg.mcap", "/camera/front/image_raw") as bag:   # topics <topic>/segmentation/{labels,color,...}
        bag.write(frame, result)                                    # header stamp and frame_id copied from the frame
    with VideoWriter("overlay.mp4", time_base, rate) as video:
        video.write(overlay_image, pts)

Both appear at their path whole or not at all (written beside it, then renamed, like `udaseg.fileio`), and both
keep what was written when the loop around them stops early (a cut input, Ctrl-C): leaving the `with` block
normally, or through an exception, closes the file properly first. OS errors become `WriteError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np

from udaseg.fileio import WriteError, atomic_write, describe_os_error

BAG_SUFFIXES = {".mcap": "MCAP", ".db3": "SQLITE3"}
VIDEO_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".avi": "avi"}


def image_msg(types, array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """A sensor_msgs/Image of an (H, W) or (H, W, 3) array: mono8, rgb8 (uint8) or 32FC1 (float32)."""
    h, w = array.shape[:2]
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
        frame_id=frame_id,
    )
    return types["sensor_msgs/msg/Image"](
        header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=data.size // h, data=data
    )


class BagWriter:
    """Per input frame: `<topic>/segmentation/labels` (mono8 train ids, 255 = none), `.../color` (rgb8) and
    `.../confidence` (mono8: max softmax x 255, or 32FC1 in [0, 1] with `float_confidence`), at the receive time of
    the input message."""

    def __init__(
        self, path: str | os.PathLike, topic: str, confidence: bool = False, float_confidence: bool = False
    ) -> None:
        from udaseg.data.rosbag import typestore

        self.path = Path(path)
        if self.path.suffix not in BAG_SUFFIXES:
            raise WriteError(f"{self.path}: a bag output ends in .mcap or .db3")
        self.base = f"{topic.rstrip('/')}/segmentation"
        self.confidence, self.float_confidence = confidence, float_confidence
        self.store = typestore()
        self.count = 0
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.writer = None

    def __enter__(self) -> BagWriter:
        # sqlite3 connections belong to the thread that made them: the bag lives on its own writer thread, where
        # serialising and writing also overlap the next frame's model call
        self._thread = Background()
        try:
            self._thread.call(self._open)
        except BaseException:
            self._thread.close()
            raise
        return self

    def _open(self) -> None:
        from rosbags.rosbag2 import Writer
        from rosbags.rosbag2.enums import StoragePlugin

        try:
            if any(p.exists() and not p.is_dir() for p in self.path.parents):
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(self.path.parent))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self._tmp, ignore_errors=True)
            self.writer = Writer(self._tmp, version=9, storage_plugin=StoragePlugin[BAG_SUFFIXES[self.path.suffix]])
            self.writer.open()
        except OSError as e:
            raise WriteError(f"cannot write {self.path}: {describe_os_error(e)}") from e
        names = ["labels", "color"] + (["confidence"] if self.confidence else [])
        self.conns = {
            n: self.writer.add_connection(f"{self.base}/{n}", "sensor_msgs/msg/Image", typestore=self.store)
            for n in names
        }

    def topics(self) -> list[str]:
        return [c.topic for c in self.conns.values()]

    def write(self, frame, result: dict) -> None:
        """`frame`: a recordings.Frame; `result`: infer.segment's labels, color[, confidence or confidence_f32].
        Queued for the writer thread (an error surfaces at a later write or at the end)."""
        self._thread.submit(self._write, frame, result)

    def _write(self, frame, result: dict) -> None:
        msgs = {"labels": (result["labels"], "mono8"), "color": (result["color"], "rgb8")}
        if self.confidence:
            msgs["confidence"] = (
                (result["confidence_f32"], "32FC1") if self.float_confidence else (result["confidence"], "mono8")
            )
        types = self.store.types
        try:
            for name, (array, encoding) in msgs.items():
                msg = image_msg(types, array, encoding, frame.stamp_ns, frame.frame_id)
                self.writer.write(
                    self.conns[name], frame.log_time_ns, self.store.serialize_cdr(msg, "sensor_msgs/msg/Image")
                )
        except OSError as e:
            raise WriteError(f"cannot write {self.path}: {describe_os_error(e)}") from e
        self.count += 1

    def __exit__(self, *exc) -> None:
        """Close the bag and move its storage file into place, also after an exception: the frames written so far
        are kept. Only a failure to write the bag itself removes it."""
        try:
            self._thread.drain()
        finally:
            try:
                self._thread.call(self._close)
            finally:
                self._thread.close()

    def _close(self) -> None:
        try:
            self.writer.close()
            stored = next(self._tmp.glob(f"*{self.path.suffix}"))
            os.replace(stored, self.path)
        except OSError as e:
            raise WriteError(f"cannot write {self.path}: {describe_os_error(e)}") from e
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)


class VideoWriter:
    """An H.264 video (MPEG-4 part 2 where PyAV lacks libx264) at the input's time base and timestamps.

    Odd frame sizes are padded by one row/column (yuv420p needs even ones)."""

    def __init__(self, path: str | os.PathLike, time_base: Fraction, rate: Fraction) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_FORMATS:
            raise WriteError(f"{self.path}: a video output ends in {', '.join(VIDEO_FORMATS)}")
        self.time_base, self.rate = time_base, rate
        self.count = 0
        self._stack = contextlib.ExitStack()
        self.container = self.stream = None

    def __enter__(self) -> VideoWriter:
        from udaseg.data.video import import_av

        av = import_av()
        f = self._stack.enter_context(atomic_write(self.path))
        self.container = av.open(f, "w", format=VIDEO_FORMATS[self.path.suffix.lower()])
        self._codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        return self

    def write(self, image: np.ndarray, pts: int) -> None:
        """(H, W, 3) uint8 RGB at `pts` (in the time base given); timestamps must increase."""
        import av

        h, w = image.shape[:2]
        if h % 2 or w % 2:
            image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self.stream is None:
            self.stream = self.container.add_stream(self._codec, rate=self.rate)
            self.stream.width, self.stream.height = image.shape[1], image.shape[0]
            self.stream.pix_fmt = "yuv420p"
            self.stream.time_base = self.time_base
            self.stream.codec_context.time_base = self.time_base
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts, frame.time_base = pts, self.time_base
        self.container.mux(self.stream.encode(frame))
        self.count += 1

    def __exit__(self, *exc) -> None:
        """Flush the encoder and close the file; the frames written so far are kept, also after an exception."""
        try:
            if self.stream is not None:
                self.container.mux(self.stream.encode(None))
            self.container.close()
        except BaseException as e:
            self._stack.__exit__(type(e), e, e.__traceback__)
            raise
        self._stack.__exit__(None, None, None)


class Background:
    """Writes on one worker thread, in order, at most `depth` pending: the next frame's model call (which releases
    the GIL) overlaps the previous frame's serialisation and disk writes. A write's error is raised in the caller at
    the next `submit` or at `close`."""

    def __init__(self, depth: int = 4) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool, self.depth, self.pending = ThreadPoolExecutor(1, thread_name_prefix="udaseg-write"), depth, []

    def submit(self, fn, *args) -> None:
        while self.pending and (len(self.pending) >= self.depth or self.pending[0].done()):
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(fn, *args))

    def call(self, fn, *args):
        """Run fn(*args) on the worker thread after the pending writes and return its result."""
        self.drain()
        return self.pool.submit(fn, *args).result()

    def drain(self) -> None:
        """Wait for every pending write (the first error is raised after all have run)."""
        pending, self.pending = self.pending, []
        errors = []
        for future in pending:
            try:
                future.result()
            except BaseException as e:  # noqa: BLE001 (re-raised below, after the others finished)
                errors.append(e)
        if errors:
            raise errors[0]

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self.pool.shutdown(wait=True)


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 blend of a frame and its colour map."""
    return (image.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha + 0.5).astype(np.uint8)
