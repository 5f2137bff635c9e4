"""Camera frames of a ROS 2 bag: `sensor_msgs/Image` and `sensor_msgs/CompressedImage`, sqlite3 (.db3) and MCAP.

Reading goes through the pure-Python `rosbags` package (`pip install udaseg[vehicle]`). A bag is a `.mcap` or `.db3`
file, or a bag folder (metadata.yaml and its storage files; a folder whose recorder died before writing
metadata.yaml is read file by file). An MCAP file whose end is missing (a recorder killed mid-write: no summary, no
footer) is read record by record up to the cut, and the frames before it are used.

Encodings: rgb8, bgr8, rgba8, bgra8, mono8 (grey repeated to three channels) and the 8-bit Bayer patterns
bayer_rggb8, bayer_bggr8, bayer_gbrg8, bayer_grbg8, demosaiced bilinearly at full resolution (each missing colour is
the mean of its nearest samples of that colour in the 3x3 neighbourhood: normalised convolution). CompressedImage:
jpeg and png (image_transport's "bgr8; jpeg compressed bgr8" style formats included).

Random access: a frame is addressed by (storage part, receive timestamp, rank among messages of the topic with that
timestamp), which rosbags answers with an indexed time query (sqlite3's timestamp index, MCAP's chunk index); the
salvage reader of a cut MCAP file keeps record offsets instead.
"""

from __future__ import annotations

import io
import mmap
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from udaseg.data.recordings import Frame, ProcessLocal, RecordingError, Subsample

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED)
CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
BAYER = {"bayer_rggb8": "RGGB", "bayer_bggr8": "BGGR", "bayer_gbrg8": "GBRG", "bayer_grbg8": "GRBG"}
ENCODINGS = (*CHANNELS, *BAYER)
INSTALL = "reading ROS 2 bags needs the rosbags package: pip install 'udaseg[vehicle]' (or pip install rosbags)"


def typestore():
    try:
        from rosbags.typesys import Stores, get_typestore
    except ImportError as e:
        raise RecordingError(INSTALL) from e
    return get_typestore(Stores.ROS2_HUMBLE)  # sensor_msgs/Image and CompressedImage are the same in every distro


# ----------------------------------------------------------------------------- decoding
def demosaic(raw: np.ndarray, pattern: str) -> np.ndarray:
    """(H, W) uint8 Bayer mosaic with 2x2 `pattern` (e.g. "RGGB": R at (0, 0)) -> (H, W, 3) uint8 RGB, bilinear."""
    h, w = raw.shape
    if h < 2 or w < 2:
        raise ValueError(f"a Bayer image needs at least 2x2 pixels, found {h}x{w}")
    rb = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)
    g = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32)

    def conv(x: np.ndarray, k: np.ndarray) -> np.ndarray:
        p = np.pad(x, 1)
        return sum(k[i, j] * p[i : i + h, j : j + w] for i in range(3) for j in range(3) if k[i, j])

    out = np.empty((h, w, 3), np.float32)
    for c, letter in enumerate("RGB"):
        mask = np.zeros((h, w), np.float32)
        for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            if pattern[k] == letter:
                mask[dy::2, dx::2] = 1
        kernel = g if letter == "G" else rb
        out[..., c] = conv(raw * mask, kernel) / conv(mask, kernel)  # a sampled pixel keeps its own value
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def image_to_rgb(msg) -> np.ndarray:
    """A deserialised sensor_msgs/Image -> (H, W, 3) uint8 RGB. Raises ValueError with what is wrong."""
    enc, h, w, step = msg.encoding.lower(), int(msg.height), int(msg.width), int(msg.step)
    if enc not in ENCODINGS:
        raise ValueError(f"unsupported encoding {msg.encoding!r}; supported: {', '.join(ENCODINGS)}")
    c = CHANNELS.get(enc, 1)
    data = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    if h < 1 or w < 1 or step < w * c or data.size < h * step:
        raise ValueError(
            f"{enc} image of {w}x{h} pixels with step {step} needs {h * max(step, w * c)} bytes, "
            f"the message holds {data.size}"
        )
    pixels = data[: h * step].reshape(h, step)[:, : w * c].reshape(h, w, c)
    if enc in BAYER:
        return demosaic(pixels[..., 0], BAYER[enc])
    if c == 1:
        return np.repeat(pixels, 3, axis=2)
    rgb = pixels[..., :3]
    return np.array(rgb[..., ::-1] if enc.startswith("bgr") else rgb, order="C")  # a writable copy of the message


def compressed_to_rgb(msg) -> np.ndarray:
    """A deserialised sensor_msgs/CompressedImage (jpeg, png) -> (H, W, 3) uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    fmt = msg.format.lower()
    if fmt and not re.search(r"jpe?g|png", fmt):
        raise ValueError(f"unsupported compressed format {msg.format!r}; supported: jpeg, png")
    try:
        with Image.open(io.BytesIO(np.asarray(msg.data, dtype=np.uint8).tobytes())) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode the {msg.format or 'compressed'} image ({e})") from e


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


# ----------------------------------------------------------------------------- storage parts
class RosbagsPart:
    """One bag (folder or storage file) through rosbags; messages addressed by (timestamp, rank)."""

    def __init__(self, path: Path) -> None:
        from rosbags.rosbag2 import Reader

        self.path, self.fault = path, None
        self.reader = Reader(path)
        self.reader.open()

    def topics(self) -> dict[str, str]:
        return {c.topic: c.msgtype for c in self.reader.connections}

    def messages(self, topic: str) -> Iterator[tuple[int, bytes, tuple]]:
        conns = [c for c in self.reader.connections if c.topic == topic]
        last, rank = None, 0
        for _, t, data in self.reader.messages(connections=conns):
            rank = rank + 1 if t == last else 0
            last = t
            yield t, data, (t, rank)

    def get(self, topic: str, loc: tuple) -> bytes:
        t, rank = loc
        conns = [c for c in self.reader.connections if c.topic == topic]
        for i, (_, _, data) in enumerate(self.reader.messages(connections=conns, start=t, stop=t + 1)):
            if i == rank:
                return data
        raise KeyError(f"no message at {t} ns (rank {rank})")

    def close(self) -> None:
        self.reader.close()


MCAP_MAGIC = b"\x89MCAP0\r\n"


class McapSalvage:
    """The messages of an MCAP file cut before its end, read record by record up to the cut.

    `fault` says where the file ends; messages are addressed by (chunk record offset or -1, record offset).
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.fault = path, None
        self.file = open(path, "rb")  # noqa: SIM115 (closed in close())
        self.buf = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
        if self.buf[:8] != MCAP_MAGIC:
            self.close()
            raise RecordingError(f"{path}: not an MCAP file ({reason})")
        self.channels: dict[int, str] = {}  # channel id -> topic
        self.schemas: dict[int, str] = {}
        self.types: dict[str, str] = {}  # topic -> message type
        self.index: list[tuple[int, int, tuple[int, int]]] = []  # (channel, log time, locator)
        self._chunk: tuple[int, bytes] | None = None
        self._scan()

    def _records(self, buf, start: int, end: int, chunk: int) -> Iterator[tuple[int, int, int]]:
        pos = start
        while pos < end:
            if pos + 9 > end:
                raise EOFError(f"the file ends inside a record header at byte {pos}")
            op, length = buf[pos], struct.unpack_from("<Q", buf, pos + 1)[0]
            if pos + 9 + length > end:
                raise EOFError(f"the file ends inside a record at byte {pos} (record of {length} bytes)")
            yield op, pos + 9, length
            pos += 9 + length

    def _scan(self) -> None:
        try:
            for op, body, length in self._records(self.buf, 8, len(self.buf), -1):
                if op in (0x02, 0x0F):  # footer, data end: the rest is the summary
                    break
                if op == 0x06:
                    self._scan_chunk(body, length)
                else:
                    self._record(self.buf, op, body, (-1, body))
        except Exception as e:  # whatever the cut left: a short record, a broken chunk, a bad decompression
            self.fault = f"cut MCAP file: {e}"

    def _scan_chunk(self, body: int, length: int) -> None:
        data = self._decompress(body)
        for op, rec, _ in self._records(data, 0, len(data), body):
            self._record(data, op, rec, (body, rec))

    def _decompress(self, body: int) -> bytes:
        if self._chunk and self._chunk[0] == body:
            return self._chunk[1]
        size = struct.unpack_from("<Q", self.buf, body + 16)[0]
        n = struct.unpack_from("<I", self.buf, body + 28)[0]
        compression = bytes(self.buf[body + 32 : body + 32 + n]).decode()
        clen = struct.unpack_from("<Q", self.buf, body + 32 + n)[0]
        raw = bytes(self.buf[body + 40 + n : body + 40 + n + clen])
        if compression == "zstd":
            try:
                from compression import zstd  # type: ignore[import-not-found]  # Python 3.14
            except ImportError:
                from backports import zstd  # rosbags' own dependency
            raw = zstd.decompress(raw)
        elif compression == "lz4":
            import lz4.frame

            raw = lz4.frame.decompress(raw)
        elif compression:
            raise ValueError(f"unsupported chunk compression {compression!r}")
        if len(raw) != size:
            raise ValueError(f"chunk at byte {body} holds {len(raw)} bytes, expected {size}")
        self._chunk = (body, raw)
        return raw

    def _record(self, buf, op: int, body: int, loc: tuple[int, int]) -> None:
        if op == 0x03:  # schema: id u16, name
            sid, n = struct.unpack_from("<HI", buf, body)
            self.schemas[sid] = bytes(buf[body + 6 : body + 6 + n]).decode()
        elif op == 0x04:  # channel: id u16, schema id u16, topic
            cid, sid, n = struct.unpack_from("<HHI", buf, body)
            topic = bytes(buf[body + 8 : body + 8 + n]).decode()
            self.channels[cid] = topic
            self.types[topic] = self.schemas.get(sid, "")
        elif op == 0x05:  # message: channel u16, sequence u32, log time u64, publish time u64, data
            cid, _, log_time = struct.unpack_from("<HIQ", buf, body)
            self.index.append((cid, log_time, loc))

    def topics(self) -> dict[str, str]:
        return dict(self.types)

    def messages(self, topic: str) -> Iterator[tuple[int, bytes, tuple]]:
        ids = {c for c, t in self.channels.items() if t == topic}
        for cid, t, loc in self.index:
            if cid in ids:
                yield t, self.get(topic, loc), loc

    def get(self, topic: str, loc: tuple[int, int]) -> bytes:
        chunk, rec = loc
        buf = self.buf if chunk < 0 else self._decompress(chunk)
        length = struct.unpack_from("<Q", buf, rec - 8)[0]
        return bytes(buf[rec + 22 : rec + length])

    def close(self) -> None:
        self.buf.close()
        self.file.close()


def part_paths(path: Path) -> list[Path]:
    """The storage parts of a bag: itself, or the storage files of a folder without metadata.yaml (in order)."""
    if not path.is_dir() or (path / "metadata.yaml").exists():
        return [path]
    files = [p for p in path.iterdir() if p.suffix in (".mcap", ".db3")]
    if not files:
        raise RecordingError(f"{path}: not a ROS 2 bag: expected metadata.yaml or .mcap/.db3 files in the folder")
    return sorted(files, key=lambda p: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)])


def open_part(path: Path):
    try:
        from rosbags.rosbag2 import ReaderError
    except ImportError as e:
        raise RecordingError(INSTALL) from e
    try:
        return RosbagsPart(path)
    except ReaderError as e:
        if path.suffix == ".mcap" and path.is_file():
            return McapSalvage(path, str(e))
        raise RecordingError(f"{path}: not a readable ROS 2 bag ({e})") from e
    except Exception as e:  # sqlite/apsw errors of a damaged .db3 and the like
        raise RecordingError(f"{path}: not a readable ROS 2 bag ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------- the source
@dataclass(frozen=True)
class BagFrame:
    """Where frame `index` of the topic is: storage part, receive time and the part's locator."""

    index: int
    part: int
    log_time_ns: int
    loc: tuple


@dataclass
class BadFrame:
    """A frame that could not be decoded (skipped by readers that go on)."""

    index: int
    log_time_ns: int
    reason: str


class BagSource:
    """One image topic of a bag: indexed, random access, or a stream in order."""

    def __init__(self, path: str | Path, topic: str | None = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise RecordingError(f"{self.path}: no such bag (expected a .mcap or .db3 file or a bag folder)")
        self.parts = part_paths(self.path)
        self._open = ProcessLocal()
        topics: dict[str, str] = {}
        try:
            for part in self.readers():
                topics.update(part.topics())
        except RecordingError as e:
            raise RecordingError(f"{e} (reading topic {topic})" if topic else str(e)) from e
        images = sorted(t for t, ty in topics.items() if ty in IMAGE_TYPES)
        listing = ", ".join(f"{t} ({topics[t].rsplit('/', 1)[-1]})" for t in images) or "none"
        if topic is None:
            if len(images) != 1:
                raise RecordingError(
                    f"{self.path}: name the camera topic (rosbag:PATH:TOPIC, --topic): image topics "
                    f"in this bag: {listing}"
                )
            topic = images[0]
        elif topic not in topics:
            raise RecordingError(f"{self.path}: no topic {topic!r}; image topics in this bag: {listing}")
        elif topics[topic] not in IMAGE_TYPES:
            raise RecordingError(
                f"{self.path}: topic {topic} holds {topics[topic]}, not sensor_msgs/Image or "
                f"CompressedImage; image topics in this bag: {listing}"
            )
        self.topic, self.msgtype = topic, topics[topic]
        self._types = None

    def describe(self) -> str:
        return f"{self.path} topic {self.topic}"

    def readers(self) -> list:
        return self._open.get(lambda: [open_part(p) for p in self.parts])

    def close(self) -> None:
        self._open.close(lambda parts: [p.close() for p in parts])

    def _messages(self) -> Iterator[tuple[int, int, int, bytes, tuple]]:
        """(index, part, log time, data, locator) in order; a read fault raises RecordingError after the frames
        before it."""
        i = 0
        for p, part in enumerate(self.readers()):
            it = part.messages(self.topic)
            while True:
                try:
                    t, data, loc = next(it)
                except StopIteration:
                    break
                except Exception as e:  # rosbags' ReaderError, sqlite/apsw, decompression: the storage is damaged
                    raise self.fault(f"{type(e).__name__}: {e}", i, part.path) from e
                yield i, p, t, data, loc
                i += 1
            if part.fault:
                raise self.fault(part.fault, i, part.path)

    def fault(self, why: str, count: int, part: Path) -> RecordingError:
        where = f" ({part.name})" if part != self.path else ""
        return RecordingError(
            f"{self.path}{where} topic {self.topic}: the bag is truncated or damaged after "
            f"{count} messages of the topic: {why}"
        )

    def index(self, sub: Subsample) -> tuple[list[BagFrame], str | None]:
        """The kept frames' locators, and the fault that ended the reading early (None: read to the end)."""
        sub.reset()
        frames: list[BagFrame] = []
        try:
            for i, p, t, _, loc in self._messages():
                if sub.keep(i, t):
                    frames.append(BagFrame(i, p, t, loc))
        except RecordingError as e:
            return frames, str(e)
        return frames, None

    def decode(self, index: int, log_time: int, data: bytes) -> Frame:
        ts = self._types = self._types or typestore()
        try:
            msg = ts.deserialize_cdr(data, self.msgtype)
            image = image_to_rgb(msg) if self.msgtype == IMAGE else compressed_to_rgb(msg)
        except Exception as e:  # a malformed message: name it, whatever the decoder raised
            raise RecordingError(f"{self.describe()} frame {index}: {e}") from e
        return Frame(index, stamp_ns(msg.header), log_time, msg.header.frame_id, image)

    def read(self, ref: BagFrame) -> Frame:
        part = self.readers()[ref.part]
        try:
            with self._open.lock():  # one file position per reader; decoding below runs in parallel
                data = part.get(self.topic, ref.loc)
        except Exception as e:
            raise RecordingError(f"{self.describe()} frame {ref.index}: cannot read it ({e})") from e
        return self.decode(ref.index, ref.log_time_ns, data)

    def stream(self, sub: Subsample) -> Iterator[Frame | BadFrame]:
        """Kept frames in order; an undecodable one comes as a BadFrame; a storage fault raises RecordingError."""
        sub.reset()
        for i, _, t, data, _ in self._messages():
            if sub.keep(i, t):
                try:
                    yield self.decode(i, t, data)
                except RecordingError as e:
                    yield BadFrame(i, t, str(e))

    def count(self) -> int | None:
        """Messages on the topic by the bag's own statistics (None when unknown)."""
        parts = self.readers()
        if any(not isinstance(p, RosbagsPart) for p in parts):
            return None
        return sum(c.msgcount for p in parts for c in p.reader.connections if c.topic == self.topic)
