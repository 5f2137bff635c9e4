"""Reading images and labels with errors that name the file, what was expected and what was found.

`read_png_array` is a self-contained PNG decoder (zlib + filter reconstruction in numpy) for the files Pillow
cannot read losslessly: 16-bit multi-channel PNGs such as SYNTHIA's `GT/LABELS` (Pillow keeps only the high byte
of each 16-bit sample there, which turns class 3 into 0).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from udaseg.fileio import UserError, atomic_write

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (3 = palette is left to Pillow)


class DatasetError(UserError, ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent. The message says which and why.

    A `UserError`: the CLIs print the message alone (exit code 2). Also a ValueError for older callers."""


DataError = DatasetError
"""The name the run-input check (`udaseg.data.check`) uses; the same class."""


def _open_error(path: str | Path, what: str, err: Exception) -> DatasetError:
    return DatasetError(
        f"cannot read {what} {path}: {type(err).__name__}: {err}. "
        f"Expected a complete, readable PNG/JPEG file; re-copy or re-extract it."
    )


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB (grey and RGBA inputs are converted)."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes everything now: a truncated file raises here, not later in a transform
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError as err:
        raise DatasetError(f"image file not found: {path}") from err
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise _open_error(path, "image", err) from err


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file from its header only (fast: no decoding)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            return h, w
    except FileNotFoundError as err:
        raise DatasetError(f"file not found: {path}") from err
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise _open_error(path, "file", err) from err


def verify_image(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file after checking that the file is complete, without decoding its pixels where the
    format allows: PNG chunks are read and their CRCs checked up to IEND (Pillow's `verify`), a JPEG must end with
    its end-of-image marker; other formats are decoded. About 10x faster than decoding a PNG."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            fmt = im.format
            if fmt == "PNG":
                im.verify()
            elif fmt != "JPEG":
                im.load()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, Path(path).stat().st_size - 4096))
                if b"\xff\xd9" not in f.read():
                    raise OSError("no JPEG end-of-image marker: the file is truncated")
        return h, w
    except FileNotFoundError as err:
        raise DatasetError(f"image file not found: {path}") from err
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise _open_error(path, "image", err) from err


def read_label(path: str | Path) -> np.ndarray:
    """Read a single-channel id label (8-bit grey, palette-indexed or 16-bit grey) as an (H, W) integer array.

    A colour (RGB) label is refused: it is usually a `*_color.png` visualisation picked by mistake.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("L", "P"):
                return np.asarray(im, dtype=np.uint8).copy()  # 'P': palette indices are the ids (GTA5)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im).astype(np.int32)
            found = im.mode
    except FileNotFoundError as err:
        raise DatasetError(f"label file not found: {path}") from err
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise _open_error(path, "label", err) from err
    raise DatasetError(
        f"label {path}: expected a single-channel id image (mode L, P or I;16), found mode "
        f"{found}. Colour visualisations (*_color.png) are not labels."
    )


def read_label_channel(path: str | Path, channel: int = 0) -> np.ndarray:
    """Read one channel of a (possibly 16-bit, multi-channel) label PNG as (H, W) int32 (SYNTHIA: channel 0)."""
    return read_png_array(path, channel)[:, :, 0].astype(np.int32)  # (H, W)


def read_png_array(path: str | Path, channel: int | None = None) -> np.ndarray:
    """Decode a PNG losslessly to (H, W, C) uint8/uint16. Pillow handles palette, 8-bit and 16-bit grey files;
    16-bit colour files go through the numpy decoder, which decodes only `channel` when one is given
    (PNG filters work on each byte lane of a pixel independently) and then returns (H, W, 1)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise DatasetError(f"label file not found: {path}") from err
    except OSError as err:
        raise _open_error(path, "file", err) from err
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33:
        raise DatasetError(f"{path}: expected a PNG file (signature {PNG_SIGNATURE!r}), found {data[:8]!r}")
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if depth != 16 or color_type not in (2, 4, 6):
        arr = read_label(path) if color_type in (0, 3) else read_image(path)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        if channel is None:
            return arr
        if not 0 <= channel < arr.shape[2]:
            raise DatasetError(f"{path}: expected at least {channel + 1} channels, found {arr.shape[2]}")
        return arr[:, :, channel : channel + 1]
    if interlace:
        raise DatasetError(
            f"{path}: interlaced 16-bit colour PNGs are not supported; expected a non-interlaced "
            f"PNG (re-save it without interlacing)"
        )
    n_channels = _PNG_CHANNELS[color_type]
    if channel is not None and not 0 <= channel < n_channels:
        raise DatasetError(f"{path}: expected at least {channel + 1} channels, found {n_channels}")
    raw = _idat_bytes(data, path)
    return _unfilter(raw, height, width, n_channels, 2, path, channel)


def _idat_bytes(data: bytes, path: str | Path) -> bytes:
    """Concatenate and inflate the IDAT chunks; a missing IEND or bad stream means the file is truncated."""
    pos, chunks, ended = 8, [], False
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length:
            break
        if kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            ended = True
            break
        pos += 12 + length
    try:
        raw = zlib.decompress(b"".join(chunks))
    except zlib.error as err:
        raise DatasetError(f"{path}: truncated or corrupt PNG data ({err}); re-copy the file") from err
    if not ended:
        raise DatasetError(f"{path}: truncated PNG (no IEND chunk); re-copy the file")
    return raw


def _unfilter(
    raw: bytes, height: int, width: int, channels: int, sample_bytes: int, path, channel: int | None = None
) -> np.ndarray:
    """Undo the PNG row filters. Returns (H, W, C) uint16 (big-endian samples combined); C = 1 with `channel`.

    Filters None/Sub/Up are vectorised per row. Average and Paeth depend on the reconstructed left neighbour, so
    rows using them are solved along anti-diagonals (a wavefront: cell (r, x) needs (r, x-1), (r-1, x) and
    (r-1, x-1), all on earlier diagonals): H + W vectorised steps instead of H * W scalar ones.
    """
    bpp = channels * sample_bytes
    stride = width * bpp
    if len(raw) != height * (stride + 1):
        raise DatasetError(
            f"{path}: expected {height * (stride + 1)} decompressed bytes for a {width}x{height} "
            f"PNG, found {len(raw)} (truncated or corrupt)"
        )
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    ftype = rows[:, 0].copy()
    if ftype.max(initial=0) > 4:
        raise DatasetError(f"{path}: corrupt PNG (row filter type {int(ftype.max())}, expected 0..4)")
    filt = rows[:, 1:].reshape(height, width, bpp)
    if channel is not None:  # keep the byte lanes of one channel only
        filt = filt[:, :, channel * sample_bytes : (channel + 1) * sample_bytes]
        channels = 1
    if (ftype >= 3).any():
        out = _unfilter_wavefront(filt, ftype)
    else:
        out = _unfilter_rows(filt, ftype)
    samples = out.reshape(height, width, channels, sample_bytes).astype(np.uint16)
    return (samples[..., 0] << 8) | samples[..., 1] if sample_bytes == 2 else samples[..., 0]


def _unfilter_rows(filt: np.ndarray, ftype: np.ndarray) -> np.ndarray:
    """Rows using only filters 0 (None), 1 (Sub: running sum along the row) and 2 (Up)."""
    out = np.empty_like(filt)  # (H, W, bpp) uint8; uint8 arithmetic wraps modulo 256 as PNG requires
    prev = np.zeros_like(filt[0])
    for r in range(filt.shape[0]):
        if ftype[r] == 1:
            out[r] = np.cumsum(filt[r], axis=0, dtype=np.uint8)
        elif ftype[r] == 2:
            out[r] = filt[r] + prev
        else:
            out[r] = filt[r]
        prev = out[r]
    return out


def _unfilter_wavefront(filt: np.ndarray, ftype: np.ndarray) -> np.ndarray:
    """All five filters, solved one anti-diagonal d = r + x at a time."""
    h, w, bpp = filt.shape
    n_diag = h + w - 1
    # skewed[d, r + 1] holds cell (r, x = d - r); row 0 and never-written cells stay 0 (PNG's zero padding).
    skewed = np.zeros((n_diag + 1, h + 1, bpp), dtype=np.int16)
    r_idx, x_idx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    fsk = np.zeros((n_diag, h, bpp), dtype=np.int16)
    fsk[r_idx + x_idx, r_idx] = filt
    t_all = ftype.astype(np.int16)[:, None]  # (H, 1)
    for d in range(n_diag):
        lo, hi = max(0, d - w + 1), min(h - 1, d) + 1
        f = fsk[d, lo:hi]
        a = skewed[d - 1, lo + 1 : hi + 1] if d >= 1 else np.zeros_like(f)  # left (r, x-1)
        b = skewed[d - 1, lo:hi] if d >= 1 else np.zeros_like(f)  # up (r-1, x)
        c = skewed[d - 2, lo:hi] if d >= 2 else np.zeros_like(f)  # up-left (r-1, x-1)
        t = t_all[lo:hi]
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = np.choose(t, [np.zeros_like(a), a, b, (a + b) >> 1, paeth]) if f.size else f
        skewed[d, lo + 1 : hi + 1] = (f + pred) & 255
    return skewed[r_idx + x_idx, r_idx + 1].astype(np.uint8)  # (H, W, bpp)


def write_label(path: str | Path, label: np.ndarray, atomic: bool = True) -> None:
    """Write an (H, W) uint8 label as a grey PNG (atomically: the file appears whole or not at all)."""
    _save_png(path, Image.fromarray(np.asarray(label, dtype=np.uint8)), atomic)


def write_image(path: str | Path, image: np.ndarray, atomic: bool = True) -> None:
    """Write an (H, W, 3) uint8 image as PNG (atomically unless `atomic=False`, for files in a temporary folder
    that is renamed into place as a whole)."""
    _save_png(path, Image.fromarray(np.asarray(image, dtype=np.uint8)), atomic)


def _save_png(path: str | Path, im: Image.Image, atomic: bool) -> None:
    if not atomic:
        im.save(path, format="PNG", compress_level=1)
        return
    with atomic_write(path) as f:  # OS errors become WriteError naming the path
        im.save(f, format="PNG", compress_level=1)
