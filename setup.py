"""Builds the optional C++ extension ``udaseg._runtime``; all metadata lives in pyproject.toml.

The extension binds the C++ runtime's pre/post-processing, engine-metadata reader and tensor-type table
(export/runtime, the library a perception stack links); tests use it to check that C++ and Python agree.
It is optional: without pybind11 or a C++ compiler, or if the build fails, udaseg still installs and imports,
and a warning says what was skipped.
For development: ``python setup.py build_ext --inplace`` (or ``pip install -e .``).
"""

import sys
import warnings

from setuptools import setup
from setuptools.command.build_ext import build_ext

RUNTIME = "export/runtime"


def _extensions() -> list:
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        warnings.warn("pybind11 not found: skipping the C++ extension udaseg._runtime", stacklevel=1)
        return []
    # No fused multiply-add: the C++ results stay bit-identical to numpy (see prepost.hpp).
    flags = [] if sys.platform == "win32" else ["-ffp-contract=off"]
    names = ["prepost", "image_io", "tensor_types", "engine_meta", "json"]  # the library without the TensorRT runner
    sources = [f"{RUNTIME}/src/{name}.cpp" for name in names] + [f"{RUNTIME}/bindings.cpp"]
    return [
        Pybind11Extension(
            "udaseg._runtime", sources, include_dirs=[f"{RUNTIME}/include"], cxx_std=17, extra_compile_args=flags
        )
    ]


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the package works without its extension."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no compiler at all (DistutilsPlatformError) and the like
            self._skip(e)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # compile or link error
            self._skip(e)

    @staticmethod
    def _skip(error: Exception) -> None:
        message = (
            f"udaseg: building the C++ extension udaseg._runtime failed ({error}); udaseg works without it, "
            "only the C++/Python equivalence tests are skipped. Install a C++17 compiler and pybind11 to build it."
        )
        warnings.warn(message, stacklevel=1)
        print(f"WARNING: {message}", file=sys.stderr)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
