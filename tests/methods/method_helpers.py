"""What test_dida.py and test_cpsl.py share: whether Triton can run."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def triton_kernels_present() -> bool:
    return importlib.util.find_spec("triton") is not None and all(
        importlib.util.find_spec(f"udaseg.kernels.{n}_triton") is not None
        for n in ("bank_logsumexp", "instance_loss", "fuse", "class_sums", "sinkhorn"))
