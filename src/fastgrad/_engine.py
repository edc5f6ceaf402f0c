"""The engine seam: the one module that chooses between the compiled engine and the
pure-Python reference, once, at import.

The compiled `fastgrad._core` is chosen unless the environment sets FASTGRAD_PUREPYTHON=1
or the extension was not built; then `fastgrad.reference` (same API, same semantics)
stands in, with a warning in the second case. Each engine module provides the same names:
`Value`, `_Params` (the optimizers' kernel over a list of parameters), and the no_grad
hooks `_enter_no_grad`, `_exit_no_grad`, `_is_grad_enabled`. Everything else in fastgrad
(nn, optim, grad_mode, functional, checks) binds to the engine through this module.
"""
from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Any

from fastgrad import reference

engine: ModuleType
if os.environ.get("FASTGRAD_PUREPYTHON"):
    engine = reference
    ENGINE = "reference"
    REASON = "FASTGRAD_PUREPYTHON is set"
else:
    try:
        from fastgrad import _core as engine
        ENGINE = "compiled"
        REASON = ""
    except ImportError as exc:
        warnings.warn(
            f"fastgrad's compiled engine is not available ({exc}); using the pure-Python "
            "reference engine, which is much slower. Reinstall with a C compiler to fix.",
            RuntimeWarning,
            stacklevel=3,
        )
        engine = reference
        ENGINE = "reference"
        REASON = f"the compiled engine is not available ({exc})"

Value = engine.Value

# Every engine whose Values this process can make: the chosen one, and the reference,
# which is always importable (tests and benchmarks use both side by side). no_grad
# reaches all of them.
try:
    from fastgrad import _core as _compiled
    ENGINES: tuple[ModuleType, ...] = (_compiled, reference)
except ImportError:
    ENGINES = (reference,)


def engine_of(values: list[Any]) -> ModuleType:
    """The engine module the given Values belong to (all to the same one), else TypeError."""
    for module in ENGINES:
        if all(type(v) is module.Value for v in values):
            return module
    bad = next((v for v in values if not any(type(v) is m.Value for m in ENGINES)), None)
    if bad is not None:
        raise TypeError(f"parameters must be Values, not {type(bad).__name__!r}")
    raise TypeError("parameters must all be Values of one engine")
