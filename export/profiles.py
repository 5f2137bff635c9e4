"""Input shapes for engines: parse ``--min/--opt/--max``, check them against the ONNX input, check runtime shapes.

A profile is three ``(B, 3, H, W)`` shapes. Static ONNX inputs need none (their shape is the profile); dynamic ones
need min/opt/max, and the engine then accepts exactly the shapes between min and max. ``check_in_profile`` is the
runtime guard: it names the dimension that falls outside instead of TensorRT's generic binding error.
"""

from __future__ import annotations

from dataclasses import dataclass

from udaseg.export.onnx_utils import ExportError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    name: str  # the ONNX input name
    min: Shape
    opt: Shape
    max: Shape

    @property
    def is_static(self) -> bool:
        return self.min == self.opt == self.max

    def as_dict(self) -> dict:
        return {"input": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def parse_shape(text: str) -> tuple[str | None, Shape]:
    """``"1x3x512x1024"`` or ``"input:1x3x512x1024"`` (commas also accepted) -> (name or None, shape)."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.replace(",", "x").lower().split("x"))
    except ValueError:
        raise ExportError(f"cannot parse shape {text!r}: expected e.g. 1x3x512x1024 or input:1x3x512x1024") from None
    if any(d <= 0 for d in shape):
        raise ExportError(f"shape {text!r} has non-positive dims")
    return (name or None) if sep else None, shape


def resolve_profile(
    name: str, onnx_shape: list, min_s: str | None = None, opt_s: str | None = None, max_s: str | None = None
) -> Profile:
    """The profile of input ``name`` whose ONNX shape is ``onnx_shape`` (ints, or str/None for dynamic dims).

    Static inputs: shapes may be omitted, and given ones must equal the ONNX shape. Dynamic inputs: ``opt`` is
    required; ``min``/``max`` default to ``opt``. Every mismatch raises ExportError naming the dim.
    """
    dynamic = [i for i, d in enumerate(onnx_shape) if not isinstance(d, int)]
    given = {}
    for key, text in (("min", min_s), ("opt", opt_s), ("max", max_s)):
        if text is not None:
            input_name, shape = parse_shape(text)
            if input_name is not None and input_name != name:
                raise ExportError(f"--{key} {text!r} names input {input_name!r}; the ONNX input is {name!r}")
            given[key] = shape
    if not dynamic and not given:
        static = tuple(onnx_shape)
        return Profile(name, static, static, static)
    if dynamic and "opt" not in given:
        axes = ", ".join(f"{i} ({onnx_shape[i] or '?'})" for i in dynamic)
        raise ExportError(
            f"input {name!r} {onnx_shape} has dynamic dims {axes}: give --opt (and --min/--max) shapes, "
            "e.g. --min 1x3x512x1024 --opt 1x3x1024x2048 --max 1x3x1024x2048"
        )
    opt = given["opt"] if "opt" in given else next(iter(given.values()))
    profile = Profile(name, given.get("min", opt), opt, given.get("max", opt))
    for key in ("min", "opt", "max"):
        shape = getattr(profile, key)
        if len(shape) != len(onnx_shape):
            raise ExportError(f"--{key} {shape} has rank {len(shape)}; input {name!r} is {onnx_shape}")
        for i, (s, d) in enumerate(zip(shape, onnx_shape)):
            if isinstance(d, int) and s != d:
                raise ExportError(f"--{key} {shape}: dim {i} is static {d} in the ONNX input {name!r} {onnx_shape}")
    for i in range(len(onnx_shape)):
        if not profile.min[i] <= profile.opt[i] <= profile.max[i]:
            raise ExportError(
                f"profile dim {i}: need min <= opt <= max, got {profile.min[i]}, {profile.opt[i]}, {profile.max[i]}"
            )
    return profile


def check_in_profile(shape: Shape, profile: Profile) -> None:
    """Raise ExportError naming every dim of ``shape`` outside ``profile`` (the engine's accepted range)."""
    if len(shape) != len(profile.min):
        raise ExportError(f"input {profile.name!r} takes rank {len(profile.min)} shapes, got {tuple(shape)}")
    bad = [
        f"dim {i} = {s} not in [{lo}, {hi}]"
        for i, (s, lo, hi) in enumerate(zip(shape, profile.min, profile.max))
        if not lo <= s <= hi
    ]
    if bad:
        raise ExportError(
            f"input shape {tuple(shape)} is outside the engine's profile for {profile.name!r} "
            f"(min {list(profile.min)}, max {list(profile.max)}): {'; '.join(bad)}. Resize the input or rebuild the "
            "engine with export/to_trt.py --min/--max covering it"
        )
