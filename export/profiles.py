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


# ----------------------------------------------------------------------------- what a C++ program needs to know
RUNTIME_SCHEMA = 1  # version of the runtime block; export/runtime/src/engine_meta.cpp reads this one


def class_info(num_classes: int, meta: dict) -> dict:
    """Class names, palette and evaluation protocol of a model with ``num_classes`` outputs.

    19 classes are the Cityscapes train ids (udaseg.data.labels); other counts get ``class_<i>`` names and the
    first colours of the same palette (black beyond it), unless ``meta`` (the ONNX metadata) names them.
    """
    from udaseg.data.labels import CLASS_NAMES, IGNORE_INDEX, PROTOCOLS, palette_array

    cityscapes = num_classes == len(CLASS_NAMES)
    names = meta.get("class_names") or (list(CLASS_NAMES) if cityscapes else [f"class_{i}" for i in range(num_classes)])
    palette = meta.get("palette") or palette_array(num_classes)[:num_classes].tolist()
    protocol = int(meta.get("protocol") or (19 if cityscapes else 0))
    class_ids = list(PROTOCOLS[protocol]) if cityscapes and protocol in PROTOCOLS else list(range(num_classes))
    if len(names) != num_classes or len(palette) != num_classes:
        raise ExportError(f"metadata names {len(names)} classes and {len(palette)} colours for {num_classes} classes")
    return {
        "num_classes": num_classes,
        "class_names": list(names),
        "palette": [[int(c) for c in rgb] for rgb in palette],
        "ignore_index": IGNORE_INDEX,
        "protocol": {"classes": protocol or num_classes, "class_ids": class_ids},
    }


def _output_entry(t: dict) -> dict:
    kind = {"labels": "labels", "logits": "logits"}.get(t["name"], "other")
    layout = {"labels": "NHW", "logits": "NCHW"}.get(kind, "")
    return {"name": t["name"], "kind": kind, "dtype": t["dtype"], "layout": layout, "shape": _dims(t["shape"])}


def _dims(shape: list) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]  # -1: dynamic


def runtime_spec(io: list[dict], meta: dict, profile: Profile | None = None, precision: str | None = None) -> dict:
    """The ``runtime`` block of ONNX metadata and ``<engine>.json``: everything needed to run the graph from C++.

    ``io``: onnx_utils.describe_io of the graph; ``meta``: its udaseg metadata (class count, export settings,
    ``graph_normalize``); ``profile``: the engine's input profile, when there is one.

        input:   name, layout (NCHW), dtype, channels (RGB), shape (-1 = dynamic), host_preprocess (resize and,
                 for float32, (v / 255 - mean) / std), graph_normalize (mean/std the graph applies itself)
        outputs: name, kind (labels | logits), dtype, layout, shape
        classes: num_classes, class_names, palette, ignore_index, protocol {classes, class_ids}
    """
    inputs = [t for t in io if t["kind"] == "input"]
    if len(inputs) != 1:
        raise ExportError(f"a segmentation graph has one input, found {[t['name'] for t in inputs]}")
    inp = inputs[0]
    uint8 = inp["dtype"] == "uint8"
    outputs = [_output_entry(t) for t in io if t["kind"] == "output"]
    num_classes = int(meta.get("num_classes") or next((o["shape"][1] for o in outputs if o["kind"] == "logits"), 0))
    if num_classes <= 0:
        raise ExportError("the class count is unknown: the ONNX has no udaseg metadata and no logits output")
    graph_norm = meta.get("graph_normalize")
    spec = {
        "schema": RUNTIME_SCHEMA,
        "input": {
            "name": inp["name"],
            "layout": "NCHW",
            "dtype": inp["dtype"],
            "channels": "RGB",
            "shape": _dims(inp["shape"]),
            "host_preprocess": {
                "resize": "bilinear_half_pixel",  # export/prepost.py resize_bilinear, runtime/prepost.hpp preprocess
                "scale": "none" if uint8 else "divide_by_255",  # uint8: raw 0..255, the graph divides by 255
                "mean": [0.0, 0.0, 0.0],
                "std": [1.0, 1.0, 1.0],
            },
            "graph_normalize": graph_norm,  # ImageNet mean/std: the model's first layer
        },
        "outputs": outputs,
        **class_info(num_classes, meta),
        "precision": precision or meta.get("precision"),
    }
    if profile is not None:
        spec["profile"] = {"min": list(profile.min), "opt": list(profile.opt), "max": list(profile.max)}
    return spec
