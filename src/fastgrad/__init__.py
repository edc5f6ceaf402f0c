"""fastgrad: micrograd's Value and nn on a Cython tape arena.

The engine is chosen once, in fastgrad._engine: the compiled `fastgrad._core` unless the
environment sets FASTGRAD_PUREPYTHON=1 or the extension was not built, in which case the
pure-Python `fastgrad.reference` engine (same API, same semantics) stands in.
"""
from typing import TYPE_CHECKING

if TYPE_CHECKING:               # type checkers see the compiled API (fastgrad/_core.pyi)
    from fastgrad._core import Value
    ENGINE: str
    __version__: str
else:
    from fastgrad._engine import ENGINE, Value

from fastgrad.grad_mode import (  # noqa: E402
    enable_grad, is_grad_enabled, no_grad, set_grad_enabled)
from fastgrad.checks import GradcheckError, gradcheck  # noqa: E402

__all__ = ["Value", "ENGINE", "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled",
           "gradcheck", "GradcheckError"]


def __getattr__(name: str) -> str:
    # __version__, read on first use: importlib.metadata (email, zipfile, ...) would be
    # most of fastgrad's import time. The one place the version is written is
    # pyproject.toml.
    if name != "__version__":
        raise AttributeError(f"module 'fastgrad' has no attribute {name!r}")
    from importlib import metadata
    try:
        version = metadata.version("fastgrad")
    except metadata.PackageNotFoundError:   # a source tree on sys.path, never installed
        version = "0+unknown"
    globals()["__version__"] = version
    return version


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"__version__"})
