"""The engine seam: the one module that chooses between the compiled engine and the
pure-Python reference, once, at import.

The compiled `fastgrad._core` is chosen unless the environment sets FASTGRAD_PUREPYTHON
(to anything but "" or "0": see `env_flag`) or the extension was not built; then
`fastgrad.reference` (same API, same semantics) stands in, with a warning in the second
case. Each engine module provides the same names: `Value` (micrograd's API), `GptValue`
(microgpt's: fastgrad.microgpt.Value), `_Params` (the optimizers' kernel over a list of
parameters), the fused helpers of
fastgrad.functional (`_linear`, `_rmsnorm`, `_softmax`, `_cross_entropy`, and `Matrix`,
weights packed for `_linear`), and the grad-mode hooks `_set_grad_enabled` and
`_is_grad_enabled`. Everything else in fastgrad (nn, optim, grad_mode, functional,
checks) binds to the engine through this module.
"""
from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Any

from fastgrad import reference


def env_flag(name: str) -> bool:
    """Whether the environment turns on fastgrad's flag `name`: set to anything but "" or
    "0", the way CPython reads its own PYTHON* flags (so FASTGRAD_PUREPYTHON=0 is off).
    setup.py and the debug build's FASTGRAD_TRACE read their flags by the same rule."""
    return os.environ.get(name, "") not in ("", "0")


engine: ModuleType
if env_flag("FASTGRAD_PUREPYTHON"):
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
GptValue = engine.GptValue

# Every engine whose Values this process can make: the chosen one, and the reference,
# which is always importable (tests and benchmarks use both side by side). The grad
# mode reaches all of them.
try:
    from fastgrad import _core as _compiled
    ENGINES: tuple[ModuleType, ...] = (_compiled, reference)
except ImportError:
    ENGINES = (reference,)


def engine_of(values: list[Any]) -> ModuleType:
    """The engine module the given Values belong to (all of one engine and one Value
    class: fastgrad.engine's or fastgrad.microgpt's), else TypeError."""
    for module in ENGINES:
        for cls in (module.Value, module.GptValue):
            if all(type(v) is cls for v in values):
                return module
    kinds = [(m.Value, m.GptValue) for m in ENGINES]
    bad = next((v for v in values if not any(type(v) in k for k in kinds)), None)
    if bad is not None:
        raise TypeError(f"parameters must be Values, not {type(bad).__name__!r}")
    raise TypeError("parameters must all be Values of one engine and one Value class")
