"""export/to_trt.py and export/trt_runtime.py type-check with mypy against the TensorRT 10 Python API.

The API comes from the ``tensorrt-stubs`` package (generated from TensorRT 10.13's bindings). It is installed with
``pip install --no-deps tensorrt-stubs`` (its own requirement, the tensorrt wheel, needs NVIDIA's index and a GPU
driver; ``make install`` does this). Three defects of the generated stubs stop mypy before it checks anything, so
the test type-checks against a repaired copy: parameters named ``in`` (a keyword) become ``in_``, a parameter
without a default after ones with defaults gets ``= ...``, and the module attribute ``bool`` (a DataType) that
shadows the builtin in every ``-> bool`` is dropped. Errors inside the stubs are ignored; ours are not.

The same run checks a snippet calling ``Builder.build_engine`` (removed in TensorRT 10): mypy must flag it, which
shows the stubs are in force rather than everything being ``Any``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKED = ["export/to_trt.py", "export/trt_runtime.py"]
MYPY_INI = """[mypy]
follow_imports = silent
check_untyped_defs = True
warn_unused_ignores = True
[mypy-tensorrt.*,tensorrt_bindings.*,tensorrt_libs]
ignore_errors = True
[mypy-udaseg.export.to_trt,udaseg.export.trt_runtime]
disallow_untyped_defs = True
[mypy-torch.*,onnx.*,onnxruntime.*,onnxslim.*,triton.*]
# not what this check is about, and torch alone takes mypy a minute to analyse
follow_imports = skip
"""
BAD_SNIPPET = """import tensorrt as trt

builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
engine = builder.build_engine(builder.create_network(0), builder.create_builder_config())  # TensorRT 8 API
"""


def _split_params(params: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in params:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur] if cur.strip() else parts


def repair_stub(text: str) -> str:
    """The three fixes of the module docstring, line by line (every def of the stubs is on one line)."""
    out = []
    for line in text.splitlines():
        if re.match(r"^bool\s*:", line):
            continue
        m = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*:)\s*$", line)
        if m:
            params, seen_default = [], False
            for p in _split_params(re.sub(r"\bin:", "in_:", m.group(2))):
                p = p.strip()
                seen_default = seen_default or "=" in p
                if seen_default and "=" not in p and not p.startswith("*"):
                    p += " = ..."
                params.append(p)
            line = m.group(1) + ", ".join(params) + m.group(3)
        out.append(line)
    return "\n".join(out) + "\n"


def stub_files() -> list[Path]:
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    files = [Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".pyi")]
    if not files:
        pytest.skip("tensorrt-stubs is installed without .pyi files")
    return files


def build_tree(tmp: Path) -> tuple[Path, Path]:
    """tmp/stubs (repaired tensorrt stubs) and tmp/src/udaseg (the package as installed: export/ as udaseg.export)."""
    stubs = tmp / "stubs"
    for f in stub_files():
        dst = stubs / f.parent.name / f.name if f.parent.name.startswith("tensorrt") else stubs / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(repair_stub(f.read_text()))
    (stubs / "tensorrt_libs.pyi").write_text("")  # imported by tensorrt/__init__.pyi, shipped by the tensorrt wheel
    pkg = tmp / "src" / "udaseg"
    pkg.mkdir(parents=True)
    for entry in (REPO / "udaseg").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    (pkg / "export").symlink_to(REPO / "export")
    (pkg / "kernels").symlink_to(REPO / "kernels")
    return stubs, tmp / "src"


NO_MYPY = "mypy is not installed (pip install 'udaseg[dev]')"


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason=NO_MYPY)
def test_tensorrt_code_type_checks(tmp_path):
    if sys.platform == "win32":
        pytest.skip("the package tree is assembled with symlinks")
    stubs, src = build_tree(tmp_path)
    (tmp_path / "mypy.ini").write_text(MYPY_INI)
    bad = tmp_path / "bad_snippet.py"
    bad.write_text(BAD_SNIPPET)
    files = [str(src / "udaseg" / f) for f in CHECKED]  # through the udaseg/export symlink: udaseg.export.*
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini")]
    cmd += ["--cache-dir", str(tmp_path / "cache"), "--no-error-summary", *files, str(bad)]
    env = {**os.environ, "MYPYPATH": os.pathsep.join([str(stubs), str(src)])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    ours = [line for line in errors if not line.startswith(bad.name)]  # paths print relative to tmp_path
    assert not ours, "mypy found type errors in the TensorRT code:\n" + "\n".join(ours) + done.stderr[-2000:]
    assert any("build_engine" in line and "attr-defined" in line for line in errors), (
        "mypy did not flag Builder.build_engine (removed in TensorRT 10): the stubs are not in force\n"
        + done.stdout[-3000:]
        + done.stderr[-2000:]
    )
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
