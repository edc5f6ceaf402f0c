"""micrograd's backward() calls whatever `_backward` a node holds: assigning a function to
any node, an operator's node included, replaces that node's rule (`lambda: None` stops the
gradient there), and the node's own rule assigned back restores it. Checked against
micrograd on both engines; such a node then behaves as a lecture-style custom op, which
recompute() refuses."""
import pytest
from micrograd.engine import Value as MG

from op_examples import EXAMPLES, build_example


def lecture_graph(V):
    # an expression over micrograd's ops (micrograd 0.1.0 has no tanh)
    a, b = V(2.0), V(-3.0)
    c = a * b
    d = c + V(10.0)
    return a, b, c, d, (d ** 2).relu() * 0.5 - a


def grads(*vs):
    return [v.grad for v in vs]


@pytest.mark.parametrize("which", ["c", "d"])
def test_assigned_backward_replaces_the_rule_as_in_micrograd(engine, which):
    results = []
    for V in (MG, engine.Value):
        a, b, c, d, out = lecture_graph(V)
        node = {"c": c, "d": d}[which]
        # the replacement adds a made-up derivative into a, and nothing into the others
        node._backward = lambda node=node, a=a: setattr(a, "grad", a.grad + 7.0 * node.grad)
        out.backward()
        results.append(grads(a, b, c, d, out))
    assert results[1] == pytest.approx(results[0], rel=1e-12)
    assert results[1][1] == 0.0          # b is reached only through the replaced rule


def test_lambda_none_stops_the_gradient_there(engine):
    results = []
    for V in (MG, engine.Value):
        a, b, c, d, out = lecture_graph(V)
        c._backward = lambda: None
        out.backward()
        results.append(grads(a, b, c, d, out))
    assert results[1] == pytest.approx(results[0], rel=1e-12)
    assert results[1][1] == 0.0 and results[1][2] != 0.0     # b: only reached through c


def test_a_leafs_assigned_backward_runs(engine):
    # micrograd's sweep calls every reachable node's _backward, leaves included
    calls = []
    for V in (MG, engine.Value):
        a = V(3.0)
        y = a * a
        a._backward = lambda a=a, V=V: calls.append((V, a.grad))
        y.backward()
    assert calls[0][1] == calls[1][1] == 6.0


def overridden(engine):
    # live built-in nodes with an assigned _backward (compiled engine), else None
    return engine.core._tape_stats()["overridden"] if engine.compiled else None


def test_the_own_rule_assigned_back_restores_it(engine):
    a, b = engine.Value(2.0), engine.Value(-3.0)
    c = a * b
    before = overridden(engine)
    rule = c._backward
    c._backward = lambda: None
    c._backward = rule
    (c + 1.0).backward()
    assert (a.grad, b.grad) == (-3.0, 2.0)
    y = c * 2.0
    y.recompute()                        # no Python rule left in the graph
    assert overridden(engine) == before


@pytest.mark.parametrize("op", sorted(EXAMPLES, key=int), ids=lambda op: op.name)
def test_every_op_can_be_overridden(engine, op):
    # whatever the op, an assigned _backward is what backward() runs for its node, and
    # recompute() refuses the graph naming the node's op
    leaves, node = build_example(engine.Value, op)
    if node is None or not node._prev:
        pytest.skip(f"Op.{op.name} makes no node with children")
    seen = []
    node._backward = lambda: seen.append(node.grad)
    out = node * 3.0
    out.backward()
    assert seen == [3.0]
    assert all(v.grad == 0.0 for v in leaves if v is not node)
    with pytest.raises(TypeError, match="recompute"):
        out.recompute()


def test_override_after_the_fast_paths_were_taken(engine):
    # the first backward caches the order (and may take the one-pass sweep), recompute()
    # records a replay: an assignment afterwards must still be honoured by both
    a, b = engine.Value(2.0), engine.Value(-3.0)
    c = a * b
    out = (c + 1.0) * 2.0
    out.backward()
    out.recompute()
    c._backward = lambda: None
    for v in (a, b):
        v.grad = 0.0
    out.backward()
    assert (a.grad, b.grad) == (0.0, 0.0)
    with pytest.raises(TypeError, match=r"'\*'"):
        out.recompute()


@pytest.mark.compiled
def test_the_override_count_goes_with_the_node():
    from fastgrad import _core
    V = _core.Value
    a, b = V(2.0), V(-3.0)
    c = a * b
    before = _core._tape_stats()["overridden"]
    c._backward = lambda: None
    assert _core._tape_stats()["overridden"] == before + 1
    del c
    assert _core._tape_stats()["overridden"] == before
    y = a * b + 1.0
    y.backward()
    assert (a.grad, b.grad) == (-3.0, 2.0)
    assert _core._test_scratch_clear()


def test_a_rule_may_run_another_backward(engine):
    # micrograd runs any Python in a rule: here a whole backward() of a second graph that
    # shares a leaf, in the middle of the first one's sweep, on each of two backward()s
    # (the arena growing under a sweep is test_tape's)
    results = []
    for V in (MG, engine.Value):
        a, c = V(2.0), V(5.0)
        b = a * 3
        e = ((c * c + a) * 2).relu()
        own = b._backward
        b._backward = lambda: (e.backward(), own())
        loss = sum(b * float(k) for k in range(20)) + (b + a) * b
        loss.backward()
        first = grads(a, b, c, e, loss)
        loss.backward()
        results.append((first, grads(a, b, c, e, loss)))
    assert results[1] == results[0]
