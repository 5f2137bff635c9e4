"""What test_dida.py and test_cpsl.py share: whether Triton can run."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def triton_kernels_present() -> bool:
    """Triton importable: the kernels then run under TRITON_INTERPRET=1 on CPU tensors."""
    return importlib.util.find_spec("triton") is not None
