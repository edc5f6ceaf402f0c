"""`python -m fastgrad`: what this install is, and whether its engine differentiates.

Prints the version, the engine in use (compiled, or the reference and why), the compiled
module's path and how it was built, then a self-check: the gradient of one expression
from backward() against its central finite difference. Exits 1 if the check fails.
`--version` prints the version only.
"""
from __future__ import annotations

import argparse
import platform
import sys
from typing import Any

import fastgrad
from fastgrad import _engine
from fastgrad._cli import run
from fastgrad.grad_mode import no_grad

# the self-check: d/dx of CHECK_TEXT at x = CHECK_AT, against (f(x + h) - f(x - h)) / 2h,
# whose error is O(h^2) plus rounding O(eps / h): about 1e-10 here, far inside the bound
CHECK_TEXT = "tanh(x*x + exp(x))"
CHECK_AT = 0.5
STEP = 1e-6
RTOL, ATOL = 1e-6, 1e-9


def check_function(x: Any) -> Any:
    return (x * x + x.exp()).tanh()


def self_check() -> tuple[bool, list[str]]:
    """(passed, two lines saying what was compared and how it came out)."""
    x = fastgrad.Value(CHECK_AT)
    check_function(x).backward()
    with no_grad():
        above = check_function(fastgrad.Value(CHECK_AT + STEP)).data
        below = check_function(fastgrad.Value(CHECK_AT - STEP)).data
    numeric = (above - below) / (2 * STEP)
    difference = abs(x.grad - numeric)
    allowed = ATOL + RTOL * abs(numeric)
    passed = difference <= allowed             # (False for nan)
    return passed, [
        f"self-check: d/dx {CHECK_TEXT} at x = {CHECK_AT}: backward {x.grad!r}, "
        f"finite difference {numeric!r}",
        f"self-check: {'ok' if passed else 'FAILED'} (|difference| {difference:.3g}, "
        f"allowed {allowed:.3g})",
    ]


def compiled_lines() -> list[str]:
    """Where the compiled module is and how it was built, or why there is none."""
    try:
        from fastgrad import _core
    except ImportError as exc:
        return [f"compiled module: not available ({exc})"]
    build = _core.BUILD
    return [f"compiled module: {_core.__file__}",
            f"build: {build['mode']}, Cython {build['cython']}; {build['command']}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastgrad", description="Prints what this install of fastgrad is "
        "(version, engine, build) and checks one gradient against a finite difference; "
        "exits 1 if they disagree.")
    parser.add_argument("--version", action="version", version=f"fastgrad {fastgrad.__version__}")
    parser.parse_args(argv)
    engine = _engine.ENGINE if not _engine.REASON else f"{_engine.ENGINE} ({_engine.REASON})"
    lines = [f"fastgrad {fastgrad.__version__}",
             f"engine: {engine}",
             *compiled_lines(),
             f"python: {platform.python_implementation()} {platform.python_version()} "
             f"on {sys.platform} {platform.machine()}"]
    passed, report = self_check()
    print("\n".join(lines + report))
    return 0 if passed else 1


if __name__ == "__main__":
    run(main)
