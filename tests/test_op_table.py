"""Every op of the example table (op_examples.py), checked the same way: its value and
grads against the closed form on every operand combination, gradcheck against finite
differences, the compiled engine against the reference (also with special values
assigned before backward or recompute()), and on the compiled engine the replay against
the rules' sweep and a rebuilt graph, to the bit. A new op is covered by all of them as
soon as it has a row."""
import itertools
import math
import struct

import pytest

from fastgrad import gradcheck, reference
from fastgrad.ops import Op
from op_examples import EXAMPLES, build_example, operand_combinations

REL, ABS = 1e-12, 1e-15
OPS = sorted(EXAMPLES, key=int)
CASES = [(op, c) for op in OPS for c in range(len(EXAMPLES[op].cases))]
ids = lambda oc: f"{oc[0].name}-{oc[1]}"


def bits(x):
    return struct.pack("<d", x)


@pytest.mark.parametrize("op_case", CASES, ids=ids)
def test_closed_form(engine, op_case):
    op, case = op_case
    row = EXAMPLES[op]
    xs, k = row.cases[case]
    for operands, leaves in operand_combinations(engine.Value, op, case):
        out = row.make(engine.Value, operands, k)
        out.backward()
        assert out.data == pytest.approx(row.value(xs, k), rel=REL, abs=ABS)
        for leaf, expected in zip(leaves, row.grads(xs, k)):
            if leaf is not None:
                assert leaf.grad == pytest.approx(expected, rel=REL, abs=ABS), op.name


@pytest.mark.parametrize("op_case", CASES, ids=ids)
def test_gradcheck(engine, op_case):
    op, case = op_case
    row = EXAMPLES[op]
    xs, k = row.cases[case]
    if op.name == "RELU" or op.name == "ABS":
        # (both kinks are at 0, away from every case)
        assert all(abs(x) > 1e-3 for x in xs)
    f = lambda *vs: row.make(engine.Value, list(vs), k) * 1.0
    assert gradcheck(f, [engine.Value(x) for x in xs])


@pytest.mark.compiled
@pytest.mark.parametrize("op_case", CASES, ids=ids)
def test_compiled_equals_reference(op_case):
    core = pytest.importorskip("fastgrad._core")
    op, case = op_case
    got = []
    for V in (core.Value, reference.Value):
        leaves, node = build_example(V, op, case)
        out = node * 1.5
        out.backward()
        got.append([bits(node.data), bits(out.data)] + [bits(v.grad) for v in leaves]
                   + [node._op, len(node._prev)])
    assert got[0] == got[1]


SPECIAL = [0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e-300, 0.5, 1.0, -1.0, -2.5, 710.0, -710.0,
           1e300, -1e300, math.inf, -math.inf, math.nan]


def same(x, y):
    # the same bits, or both nan (C and Python may set a nan's sign bit differently)
    return bits(x) == bits(y) or (math.isnan(x) and math.isnan(y))


def special_inputs(op):
    """(k, data) for the op's first case: every exponent k random programs draw (else the
    case's), and data for its inputs, every pair of special values for up to two inputs,
    else one input at a time through them (None: the case's value kept)."""
    xs, k = EXAMPLES[op].cases[0]
    n = len(xs)
    if n <= 2:
        data = list(itertools.product(SPECIAL, repeat=n))
    else:
        data = [(None,) * i + (x,) + (None,) * (n - i - 1) for i in range(n) for x in SPECIAL]
    ks = [k] if EXAMPLES[op].params == [None] else EXAMPLES[op].params
    return [(k, d) for k in ks for d in data]


def assigned(V, op, k, data):
    """(leaves, node): the op's node made at its first case, then its inputs assigned."""
    leaves = [V(x) for x in EXAMPLES[op].cases[0][0]]
    node = EXAMPLES[op].make(V, leaves, k)
    for leaf, x in zip(leaves, data):
        if x is not None:
            leaf.data = x
    return leaves, node


@pytest.mark.parametrize("op", [op for op in OPS if op != Op.LEAF], ids=lambda op: op.name)
def test_rules_at_assigned_special_values_equal_the_reference(op):
    # Backward reads the values when it runs (micrograd's closures read .data then), and
    # they may be anything by then: after a node's inputs, and the node itself, are
    # assigned zeros of both signs, subnormals, tiny and huge numbers, infinities or nan,
    # its rule gives the same grads on both engines, to the bit: inf or nan where
    # Python's arithmetic would raise or go complex. (A base of ** that an Adam step took
    # below 0 once got an infinity from the reference and nan from C's pow.)
    core = pytest.importorskip("fastgrad._core")
    for k, data in special_inputs(op):
        for node_data in [None] + SPECIAL:
            for g in (1.0, math.inf):
                got = []
                for V in (core.Value, reference.Value):
                    leaves, node = assigned(V, op, k, data)
                    if node_data is not None:
                        node.data = node_data
                    (node * g).backward()
                    got.append([leaf.grad for leaf in leaves])
                assert all(map(same, *got)), (op.name, k, data, node_data, g, got)


@pytest.mark.parametrize("op", [op for op in OPS if op != Op.LEAF and EXAMPLES[op].replayable],
                         ids=lambda op: op.name)
def test_recompute_from_special_values_equals_the_reference(op):
    # recompute() from inputs assigned the special values: the same error on both
    # engines with every value put back, or the same values, and then the same grads
    # from the derivatives the compiled replay recorded, to the bit
    core = pytest.importorskip("fastgrad._core")
    for k, data in special_inputs(op):
        for g in (1.0, math.inf, -0.0):
            got = []
            for V in (core.Value, reference.Value):
                leaves, node = assigned(V, op, k, data)
                root = node * g
                try:
                    root.recompute()
                except (ArithmeticError, ValueError) as e:
                    got.append((type(e), node.data, [leaf.data for leaf in leaves]))
                    continue
                root.backward()
                got.append((None, node.data, [leaf.grad for leaf in leaves]))
            (error, value, xs_or_grads), (rerror, rvalue, rxs_or_grads) = got
            assert error is rerror and same(value, rvalue), (op.name, k, data, g, got)
            assert all(map(same, xs_or_grads, rxs_or_grads)), (op.name, k, data, g, got)


@pytest.mark.compiled
@pytest.mark.parametrize("op_case", [oc for oc in CASES if EXAMPLES[oc[0]].replayable], ids=ids)
def test_replay_equals_rules_and_rebuilding(op_case):
    # the replay re-evaluates from new leaf data (== the graph built again from it, to the
    # bit), and the backward right after it applies the recorded derivatives (== the rules'
    # sweep from the same values, to the bit)
    core = pytest.importorskip("fastgrad._core")
    op, case = op_case
    row = EXAMPLES[op]
    xs, k = row.cases[case]
    moved = [x * 1.0625 for x in xs]            # (stays inside every case's domain)
    leaves, node = build_example(core.Value, op, case)
    root = (node * node + node).tanh()
    root.backward()
    for v, x in zip(leaves, moved):
        v.data = x
    root.recompute()
    assert core._test_replay_current(root)
    fresh_leaves = [core.Value(x) for x in moved]
    fresh_node = row.make(core.Value, fresh_leaves, k)
    fresh = (fresh_node * fresh_node + fresh_node).tanh()
    assert (bits(node.data), bits(root.data)) == (bits(fresh_node.data), bits(fresh.data))
    for v in leaves:
        v.grad = 0.0
    root.backward()                             # the replay's sweep
    fresh.backward()                            # the rules' sweep
    assert [bits(v.grad) for v in leaves] == [bits(v.grad) for v in fresh_leaves]
    assert core._test_scratch_clear()
