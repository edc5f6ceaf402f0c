"""fastgrad: micrograd's Value and nn on a Cython tape arena.

The engine is chosen once, in fastgrad._engine: the compiled `fastgrad._core` unless the
environment sets FASTGRAD_PUREPYTHON=1 or the extension was not built, in which case the
pure-Python `fastgrad.reference` engine (same API, same semantics) stands in.
"""
from importlib import metadata
from typing import TYPE_CHECKING

try:                    # the one place the version is written is pyproject.toml
    __version__ = metadata.version("fastgrad")
except metadata.PackageNotFoundError:       # a source tree on sys.path, never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:               # type checkers see the compiled API (fastgrad/_core.pyi)
    from fastgrad._core import Value
    ENGINE: str
else:
    from fastgrad._engine import ENGINE, Value

from fastgrad.grad_mode import is_grad_enabled, no_grad  # noqa: E402
from fastgrad.checks import GradcheckError, gradcheck  # noqa: E402

__all__ = ["Value", "ENGINE", "no_grad", "is_grad_enabled", "gradcheck", "GradcheckError"]
