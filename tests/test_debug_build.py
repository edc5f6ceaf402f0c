"""The debug build (FASTGRAD_CYTHON_DEBUG=1, `make test-debug`, run by CI) checks the
engine's invariants and can trace its sweeps; a release build does neither. Each test
runs in a fresh interpreter, since a broken invariant stops the process."""
import os
import subprocess
import sys

import pytest

core = pytest.importorskip("fastgrad._core")
pytestmark = pytest.mark.compiled
DEBUG = core._test_debug_build()


def run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, **env))


def test_a_broken_invariant_stops_the_debug_build_only():
    out = run("from fastgrad import _core\n_core._test_invariant(True)\n"
              "_core._test_invariant(False)\nprint('went on')")
    if DEBUG:
        assert out.returncode != 0 and "went on" not in out.stdout
        assert "fastgrad: broken invariant: the invariant a test broke on purpose" in out.stderr
    else:
        assert out.returncode == 0 and out.stdout.strip() == "went on", out.stderr


def test_trace_prints_every_swept_node_in_the_debug_build():
    code = ("from fastgrad._core import Value\n"
            "a, b = Value(0.5), Value(-2.0)\n"
            "y = (a * b).tanh() + a\n"
            "y.backward()\n"
            "print(a.grad, b.grad)\n")
    out = run(code, FASTGRAD_TRACE="1")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("fastgrad rule: node")]
    if DEBUG:
        # one line per node reached from y: y, tanh, a * b, a, b
        assert len(lines) == 5, out.stderr
        assert "op 1 " in lines[0]             # the sweep starts at the root, an ADD
    else:
        assert lines == []
    for off in ({}, {"FASTGRAD_TRACE": ""}, {"FASTGRAD_TRACE": "0"}):
        plain = run(code, **off)
        assert plain.stdout == out.stdout and "fastgrad rule" not in plain.stderr, off
