"""The lecture's walkthrough (shared/seed), step by step, on both engines."""
import math

import pytest

from graphs import trace


def draw_dot_records(root):
    """What the lecture's draw_dot() feeds graphviz: record nodes, op nodes and edges."""
    nodes, edges = trace(root)
    records, ops, lines = {}, {}, set()
    for n in nodes:
        uid = str(id(n))
        records[uid] = '{%s | data %.4f | grad %.4f}' % (n.label, n.data, n.grad)
        if n._op:
            ops[uid + n._op] = n._op
            lines.add((uid + n._op, uid))
    for n1, n2 in edges:
        lines.add((str(id(n1)), str(id(n2)) + n2._op))
    return records, ops, lines


def test_expression_with_labels_and_manual_backward(Value):
    a = Value(2.0, label='a')
    b = Value(-3.0, label='b')
    c = Value(10.0, label='c')
    e = a * b; e.label = 'e'
    d = e + c; d.label = 'd'
    f = Value(-2.0, label='f')
    L = d * f; L.label = 'L'
    assert L.data == -8.0
    assert {v.label for v in L._prev} == {'d', 'f'}

    # backpropagate by hand, one node at a time, as the lecture does
    L.grad = 1.0
    L._backward()
    assert (d.grad, f.grad) == (-2.0, 4.0)
    d._backward()
    assert (e.grad, c.grad) == (-2.0, -2.0)
    e._backward()
    assert (a.grad, b.grad) == (6.0, -4.0)

    records, ops, lines = draw_dot_records(L)
    assert sorted(r.split('|')[0].strip('{ ') for r in records.values()) == ['L', 'a', 'b', 'c', 'd', 'e', 'f']
    assert sorted(ops.values()) == ['*', '*', '+']
    assert len(lines) == 3 + 6   # one op -> node edge per op node, one edge per child link


def test_labels_belong_to_the_node(Value):
    a = Value(2.0, label='a')
    y = a * Value(3.0, label='three')
    del a
    (a2,) = [v for v in y._prev if v.label == 'a']    # handle re-made through _prev
    assert a2.data == 2.0
    assert {v.label for v in y._prev} == {'a', 'three'}


def test_prev_returns_the_same_objects(Value):
    a, b = Value(1.0), Value(2.0)
    y = a * b
    first, second = y._prev, y._prev
    assert first == second == {a, b}
    assert {id(v) for v in first} == {id(v) for v in second} == {id(a), id(b)}
    # intermediate nodes too, while their handles live
    z = (a + b) * y
    inner = [v for v in z._prev if v is not y][0]
    assert [v for v in z._prev if v is not y][0] is inner


def test_a_plus_a_accumulates(Value):
    a = Value(3.0, label='a')
    b = a + a; b.label = 'b'
    b.backward()
    assert a.grad == 2.0
    assert b._prev == {a}


def tanh_neuron(Value, via_method):
    x1 = Value(2.0, label='x1')
    x2 = Value(0.0, label='x2')
    w1 = Value(-3.0, label='w1')
    w2 = Value(1.0, label='w2')
    b = Value(6.8813735870195432, label='b')
    x1w1 = x1 * w1; x1w1.label = 'x1w1'
    x2w2 = x2 * w2; x2w2.label = 'x2w2'
    x1w1x2w2 = x1w1 + x2w2; x1w1x2w2.label = 'x1w1x2w2'
    n = x1w1x2w2 + b; n.label = 'n'
    if via_method:
        o = n.tanh()
    else:
        # the lecture adds tanh to Value: a node with its own _backward closure
        t = (math.exp(2 * n.data) - 1) / (math.exp(2 * n.data) + 1)
        o = Value(t, (n,), 'tanh')

        def _backward():
            n.grad += (1 - t ** 2) * o.grad
        o._backward = _backward
    o.label = 'o'
    return (x1, x2, w1, w2), n, o


@pytest.mark.parametrize("via_method", [True, False], ids=["tanh-method", "lecture-tanh"])
def test_tanh_neuron(Value, via_method):
    (x1, x2, w1, w2), n, o = tanh_neuron(Value, via_method)
    o.backward()
    t = math.tanh(n.data)
    assert o.data == pytest.approx(math.sqrt(0.5), rel=1e-9)
    assert o._op == 'tanh'
    dn = 1 - t ** 2                        # 0.5
    assert dn == pytest.approx(0.5, rel=1e-9)
    assert x1.grad == pytest.approx(w1.data * dn, rel=1e-9)    # -1.5
    assert w1.grad == pytest.approx(x1.data * dn, rel=1e-9)    # 1.0
    assert x2.grad == pytest.approx(w2.data * dn, rel=1e-9)    # 0.5
    assert w2.grad == pytest.approx(x2.data * dn, rel=1e-9)    # 0.0
    records, ops, lines = draw_dot_records(o)
    assert len(records) == 10 and sorted(ops.values()) == ['*', '*', '+', '+', 'tanh']


def test_tanh_is_maths_tanh_not_the_lectures_formula(Value):
    # README, "Differences, on purpose": the method is C's tanh, as math.tanh is, so it
    # saturates where the lecture's (e**2x - 1) / (e**2x + 1) overflows and keeps its
    # digits near 0, where that formula cancels (it gives 9.99977878e-13 at 1e-12)
    (x1, x2, w1, w2), n, o = tanh_neuron(Value, via_method=True)
    o.backward()
    t = math.tanh(n.data)
    assert o.data == t
    assert (x1.grad, w1.grad) == (w1.data * (1 - t * t), x1.data * (1 - t * t))
    assert Value(1000.0).tanh().data == 1.0 and Value(-1000.0).tanh().data == -1.0
    assert Value(1e-12).tanh().data == math.tanh(1e-12) == 1e-12


def test_lecture_backward_order_by_hand(Value):
    # the lecture's own topological sort over _prev, calling _backward per node
    (x1, x2, w1, w2), n, o = tanh_neuron(Value, via_method=False)
    topo, visited = [], set()

    def build_topo(v):
        if v not in visited:
            visited.add(v)
            for child in v._prev:
                build_topo(child)
            topo.append(v)
    build_topo(o)
    o.grad = 1.0
    for node in reversed(topo):
        node._backward()
    assert (x1.grad, w1.grad) == (pytest.approx(-1.5), pytest.approx(1.0))
