"""Graph simplification before TensorRT, with onnxslim, kept only when it helps and computes the same.

    slim, info = simplify_onnx(model, sample_feeds(model, profile.opt))
    info == {"applied": True, "nodes_before": 66, "nodes_after": 64, "max_abs_diff": {...}, ...}

onnxslim folds constants and removes redundant shape arithmetic (the dynamo exporter leaves Shape/Concat chains
around dynamic resizes). The simplified graph is run next to the original on ONNX Runtime (CPU) on the same
inputs: float outputs must agree to ``atol + rtol * max|x|``, class maps on >= 99.99 % of pixels (a reordered float
sum may flip a tie); otherwise, or when no node went away, the original is kept and ``info["reason"]`` says why.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("udaseg.export")

MIN_LABEL_AGREEMENT = 0.9999


def sample_feeds(model, shape: tuple[int, ...], count: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random images for the graph's single input at ``shape``: uint8 in [0, 255] or float32 in [0, 1]."""
    from udaseg.export.onnx_utils import input_spec

    inp = input_spec(model)
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        feeds.append({inp["name"]: x if inp["dtype"] == "uint8" else x.astype(np.float32) / np.float32(255)})
    return feeds


def _session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def compare_outputs(original, simplified, feeds: list[dict[str, np.ndarray]], rtol: float = 1e-4, atol: float = 1e-4):
    """Per output: the largest |difference| (float) or the agreement (integer); raises AssertionError on a miss."""
    a, b = _session(original), _session(simplified)
    names = [o.name for o in a.get_outputs()]
    if sorted(names) != sorted(o.name for o in b.get_outputs()):
        raise AssertionError(f"outputs differ: {names} vs {[o.name for o in b.get_outputs()]}")
    stats: dict[str, float] = {}
    for feed in feeds:
        for name, x, y in zip(names, a.run(names, feed), b.run(names, feed)):
            if x.shape != y.shape or x.dtype != y.dtype:
                raise AssertionError(f"output {name!r}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
            if np.issubdtype(x.dtype, np.floating):
                diff = float(np.abs(x.astype(np.float64) - y).max()) if x.size else 0.0
                if diff > atol + rtol * float(np.abs(x).max(initial=0.0)):
                    raise AssertionError(f"output {name!r}: max |difference| {diff:.3g}")
                stats[name] = max(stats.get(name, 0.0), diff)
            else:
                agree = float((x == y).mean()) if x.size else 1.0
                if agree < MIN_LABEL_AGREEMENT:
                    raise AssertionError(f"output {name!r}: {100 * agree:.3f} % of values agree")
                stats[name] = min(stats.get(name, 1.0), agree)
    return stats


def simplify_onnx(model, feeds: list[dict[str, np.ndarray]]) -> tuple[object, dict]:
    """``(simplified or original model, info)``; see the module docstring. Metadata is carried over."""
    try:
        import onnxslim
    except ImportError:
        return model, {"applied": False, "reason": "onnxslim is not installed (pip install 'udaseg[export]')"}
    before = len(model.graph.node)
    try:
        slim = onnxslim.slim(model)
    except Exception as e:  # onnxslim raises whatever its passes raise; the original graph is still good
        return model, {"applied": False, "reason": f"onnxslim failed: {type(e).__name__}: {e}"}
    after = len(slim.graph.node)
    info: dict = {"applied": False, "tool": f"onnxslim {onnxslim.__version__}", "nodes_before": before}
    info["nodes_after"] = after
    if after >= before:
        return model, {**info, "reason": "no node removed"}
    try:
        info["agreement"] = compare_outputs(model, slim, feeds)
    except AssertionError as e:
        log.warning("onnxslim changed the results (%s): keeping the original graph", e)
        return model, {**info, "reason": f"results differ on ONNX Runtime: {e}"}
    del slim.metadata_props[:]
    slim.metadata_props.extend(model.metadata_props)
    log.info("onnxslim: %d -> %d nodes, same results on ONNX Runtime (%s)", before, after, info["agreement"])
    return slim, {**info, "applied": True}
