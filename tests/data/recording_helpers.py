"""Small ROS 2 bags and videos written with the same libraries the toolkit reads them with (rosbags, PyAV)."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 12, 16  # tiny frames: every test stays fast
PATTERNS = {"bayer_rggb8": "RGGB", "bayer_bggr8": "BGGR", "bayer_gbrg8": "GBRG", "bayer_grbg8": "GRBG"}


def frames(n: int, seed: int = 0, h: int = H, w: int = W) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """(H, W, 3) -> (H, W) Bayer samples of `pattern` (2x2, row-major)."""
    out = np.empty(rgb.shape[:2], np.uint8)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "RGB".index(pattern[k])]
    return out


def encode(store, image: np.ndarray, encoding: str, stamp: int, frame_id: str):
    """A sensor_msgs Image (raw encodings) or CompressedImage ('jpeg', 'png') message of an RGB image."""
    t = store.types
    header = t["std_msgs/msg/Header"](
        stamp=t["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=frame_id
    )
    if encoding in ("jpeg", "png") and image is None:  # a damaged message: the stream must go on after it
        return t["sensor_msgs/msg/CompressedImage"](
            header=header, format=encoding, data=np.frombuffer(b"not an image", np.uint8)
        )
    if encoding in ("jpeg", "png"):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format=encoding.upper(), **({"quality": 95} if encoding == "jpeg" else {}))
        return t["sensor_msgs/msg/CompressedImage"](
            header=header, format=encoding, data=np.frombuffer(buf.getvalue(), np.uint8)
        )
    if encoding == "bgr8":
        pixels = image[..., ::-1]
    elif encoding == "mono8":
        pixels = image[..., 0]
    elif encoding in PATTERNS:
        pixels = mosaic(image, PATTERNS[encoding])
    else:  # rgb8, and any encoding a test wants to see refused
        pixels = image
    data = np.ascontiguousarray(pixels).reshape(-1)
    return t["sensor_msgs/msg/Image"](
        header=header,
        height=image.shape[0],
        width=image.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=data.size // image.shape[0],
        data=data,
    )


def expected(image: np.ndarray, encoding: str) -> np.ndarray:
    """What a reader should return for `image` sent with `encoding` (mono8: the first channel, repeated)."""
    return np.repeat(image[..., :1], 3, axis=2) if encoding == "mono8" else image


def write_bag(
    path: Path,
    topics: dict[str, tuple[str, list[np.ndarray]]],
    storage: str = "mcap",
    start: int = 1_700_000_000_000_000_000,
    period: int = 100_000_000,
    extra_string_topic: bool = True,
    zstd: bool = False,
):
    """A bag folder (rosbags' layout) with one topic per entry {topic: (encoding, images)}; frame i of every topic
    has header stamp start + i * period + 7 and receive time start + i * period; frame ids 'cam<topic idx>_<i>'.
    `zstd`: compressed MCAP chunks.
    Returns {topic: [(stamp, log_time, frame_id), ...]}."""
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import StoragePlugin

    from udaseg.data.rosbag import typestore

    store = typestore()
    truth = {}
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    if zstd:  # zstd-compressed MCAP chunks
        from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        if extra_string_topic:
            conn = writer.add_connection("/diagnostics", "std_msgs/msg/String", typestore=store)
            writer.write(
                conn, start, store.serialize_cdr(store.types["std_msgs/msg/String"](data="ok"), "std_msgs/msg/String")
            )
        for k, (topic, (encoding, images)) in enumerate(topics.items()):
            msgtype = "sensor_msgs/msg/CompressedImage" if encoding in ("jpeg", "png") else "sensor_msgs/msg/Image"
            conn = writer.add_connection(topic, msgtype, typestore=store)
            truth[topic] = []
            for i, image in enumerate(images):
                stamp, log_time, frame_id = start + i * period + 7, start + i * period, f"cam{k}_{i}"
                writer.write(
                    conn, log_time, store.serialize_cdr(encode(store, image, encoding, stamp, frame_id), msgtype)
                )
                truth[topic].append((stamp, log_time, frame_id))
    return truth


def storage_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))


def write_video(path: Path, images: list[np.ndarray], fps: int = 10, codec: str = "libx264") -> list[int]:
    """A video of `images` at `fps` (one keyframe every 4 frames, so seeking is exercised); returns the pts."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = images[0].shape[1], images[0].shape[0]
        stream.pix_fmt = "yuv444p" if codec == "libx264" else "yuv420p"
        stream.codec_context.gop_size = 4
        if codec == "libx264":
            stream.options = {"crf": "0", "bf": "0"}  # lossless 4:4:4: frames come back almost exactly
        stream.time_base = Fraction(1, fps)
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return list(range(len(images)))


def smooth(n: int, h: int = 32, w: int = 48) -> list[np.ndarray]:
    """Frames that survive lossy coding well (gradients that move): for video and jpeg value checks."""
    y, x = np.mgrid[0:h, 0:w]
    return [
        np.stack([(x * 4 + i * 9) % 256, (y * 6 + i * 5) % 256, np.full_like(x, 40 + 20 * i)], -1).astype(np.uint8)
        for i in range(n)
    ]
