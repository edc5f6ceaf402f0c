"""The op table is defined once (fastgrad.ops); every other part must agree with it.

Adding an op stays red here until the compiled enum, the reference rule, a test in
test_ops.py and a benchmark workload all exist.
"""
import importlib.util
import pathlib

import pytest

from fastgrad import ops, reference
from fastgrad.ops import Op

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_workloads():
    spec = importlib.util.spec_from_file_location("workloads", ROOT / "benchmarks" / "workloads.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WORKLOADS = _load_workloads()
REAL_OPS = [op for op in Op if op != Op.COUNT]


def test_count_is_the_last_code():
    assert list(Op)[-1] is Op.COUNT
    assert [int(op) for op in Op] == list(range(len(Op)))


@pytest.mark.compiled
def test_compiled_enum_mirrors_ops():
    core = pytest.importorskip("fastgrad._core")
    assert {op.name: int(op) for op in core.Op} == {op.name: int(op) for op in Op}


@pytest.mark.parametrize("op", REAL_OPS, ids=lambda op: op.name)
def test_every_op_is_complete(op):
    assert op in ops.ARITY and op in ops.SYMBOL and op in ops.DERIVATIVE
    assert op in reference.RULES
    tests = (ROOT / "tests" / "test_ops.py").read_text()
    assert f"def test_op_{op.name.lower()}(" in tests, f"no test_op_{op.name.lower()} in test_ops.py"
    assert op in WORKLOADS.COVERAGE, f"no benchmark workload exercises Op.{op.name}"
    assert WORKLOADS.COVERAGE[op] in WORKLOADS.WORKLOADS


def test_missing_reference_rule_names_the_op(monkeypatch):
    monkeypatch.delitem(reference.RULES, Op.TANH)
    y = reference.Value(0.5).tanh()
    with pytest.raises(NotImplementedError, match="TANH"):
        y.backward()
