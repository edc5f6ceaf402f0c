"""The op table is defined once (fastgrad.ops); every other part must agree with it.

Adding an op to fastgrad.ops alone makes these tests fail, each naming what is missing:
the compiled enum (_core.pxd), the reference engine's forward and rule, the op's row in
tests/op_examples.py (which every op-driven test reads) and a benchmark workload. The
compiled kernels, the replay's forward and the rules' sweep are then exercised by the
row's tests (test_op_table.py); a dispatcher without a case for the op stops the debug
build with a message.
"""
import importlib.util
import pathlib

import pytest

from fastgrad import ops, reference
from fastgrad.ops import Op
from op_examples import EXAMPLES

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_workloads():
    spec = importlib.util.spec_from_file_location("workloads", ROOT / "benchmarks" / "workloads.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WORKLOADS = _load_workloads()
REAL_OPS = [op for op in Op if op != Op.COUNT]


def test_count_is_the_last_code():
    assert list(Op)[-1] is Op.COUNT, "Op.COUNT must stay the last code (append new ops before it)"
    assert [int(op) for op in Op] == list(range(len(Op))), "op codes must be 0, 1, 2, ... in order"


@pytest.mark.compiled
def test_compiled_enum_mirrors_ops():
    core = pytest.importorskip("fastgrad._core")
    compiled = {op.name: int(op) for op in core.Op}
    for op in Op:
        assert compiled.get(op.name) == int(op), \
            f"Op.{op.name} = {int(op)} is in fastgrad/ops.py but not in the enum of " \
            f"fastgrad/_core.pxd (and _core.pyi): add `{op.name} = {int(op)}` there"
    assert set(compiled) == {op.name for op in Op}, "the compiled enum has codes ops.py lacks"


@pytest.mark.parametrize("op", REAL_OPS, ids=lambda op: op.name)
def test_every_op_is_complete(op):
    for table in ("ARITY", "SYMBOL", "DERIVATIVE"):
        assert op in getattr(ops, table), f"Op.{op.name} has no entry in fastgrad.ops.{table}"
    assert op in reference.RULES, f"Op.{op.name} has no rule in fastgrad/reference.py (RULES)"
    assert op in reference.LOCAL_GRADS, \
        f"Op.{op.name} has no entry in fastgrad/reference.py (LOCAL_GRADS)"
    if op not in (Op.LEAF, Op.CUSTOM, Op.LOCAL):   # (their values are given, not computed)
        assert op in reference.FORWARD, \
            f"Op.{op.name} has no forward in fastgrad/reference.py (FORWARD)"
    assert op in EXAMPLES, f"Op.{op.name} has no row in tests/op_examples.py"
    assert op in WORKLOADS.COVERAGE, f"no benchmark workload exercises Op.{op.name} " \
        "(benchmarks/workloads.py, COVERAGE)"
    assert WORKLOADS.COVERAGE[op] in WORKLOADS.WORKLOADS


@pytest.mark.compiled
def test_compiled_stub_lists_every_op():
    text = (ROOT / "src" / "fastgrad" / "_core.pyi").read_text()
    for op in Op:
        assert f"    {op.name} = {int(op)}\n" in text, \
            f"Op.{op.name} is missing from class Op in fastgrad/_core.pyi"


def test_missing_reference_rule_names_the_op(monkeypatch):
    monkeypatch.delitem(reference.RULES, Op.TANH)
    y = reference.Value(0.5).tanh()
    with pytest.raises(NotImplementedError, match="TANH"):
        y.backward()


def test_missing_reference_forward_names_the_op(monkeypatch):
    y = reference.Value(0.5).tanh() * 2.0
    monkeypatch.delitem(reference.FORWARD, Op.TANH)
    with pytest.raises(NotImplementedError, match="TANH"):
        y.recompute()
