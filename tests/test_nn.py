"""fastgrad.nn against micrograd.nn: same weights, reprs, parameter order, loss curve."""
import functools
import random

import pytest

import micrograd.engine
import micrograd.nn

import fastgrad
from fastgrad import demo, nn, reference
from fastgrad.datasets import make_moons


def build(module, seed, *args):
    random.seed(seed)
    return module(*args)


@pytest.mark.parametrize("cls, args", [
    ("Neuron", (3,)), ("Neuron", (3, False)), ("Layer", (2, 3)), ("MLP", (2, [16, 16, 1])),
])
def test_same_weights_reprs_and_order(cls, args):
    ours = build(getattr(nn, cls), 7, *args)
    theirs = build(getattr(micrograd.nn, cls), 7, *args)
    assert repr(ours) == repr(theirs)
    assert [p.data for p in ours.parameters()] == [p.data for p in theirs.parameters()]
    assert all(type(p) is fastgrad.Value for p in ours.parameters())


def test_layer_returns_a_bare_value_for_one_neuron():
    layer = nn.Layer(3, 1)
    out = layer([1.0, 2.0, 3.0])
    assert type(out) is fastgrad.Value
    assert nn.Neuron(2)([1.0, 1.0])._op == 'ReLU'
    assert nn.Neuron(2, nonlin=False)([1.0, 1.0])._op == '+'


def test_zero_grad():
    m = nn.MLP(2, [3, 1])
    m([0.5, -0.5]).backward()
    assert any(p.grad != 0 for p in m.parameters())
    m.zero_grad()
    assert all(p.grad == 0 for p in m.parameters())
    assert nn.Module().parameters() == []


def demo_losses(Value, model, X, y, steps):
    """micrograd's demo notebook loop (fastgrad.demo.step): [(loss, accuracy)] per step."""
    return [demo.step(model, X, y, k, Value=Value) for k in range(steps)]


@functools.lru_cache(maxsize=None)
def micrograd_demo(steps, seed=1337):
    """micrograd's demo on its own engine: (loss curve, final weights); slow, so shared."""
    X, y = make_moons(n_samples=100, noise=0.1, seed=seed)
    model = build(micrograd.nn.MLP, seed, 2, [16, 16, 1])
    curve = demo_losses(micrograd.engine.Value, model, X, y, steps)
    return curve, [p.data for p in model.parameters()]


def test_demo_loss_curve_matches_micrograd():
    X, y = make_moons(n_samples=100, noise=0.1, seed=1337)
    ours = build(nn.MLP, 1337, 2, [16, 16, 1])
    a = demo_losses(fastgrad.Value, ours, X, y, 20)
    b, their_weights = micrograd_demo(20)
    for (la, acc_a), (lb, acc_b) in zip(a, b):
        assert la == pytest.approx(lb, rel=1e-9)
        assert acc_a == acc_b
    assert a[-1][0] < a[0][0]                  # and it learns
    for p, q in zip(ours.parameters(), their_weights):
        assert p.data == pytest.approx(q, rel=1e-9, abs=1e-12)


def test_fused_mlp_follows_micrographs_loss_curve():
    X, y = make_moons(n_samples=100, noise=0.1, seed=1337)
    ours = build(nn.MLP, 1337, 2, [16, 16, 1], True)
    assert repr(ours) == repr(build(micrograd.nn.MLP, 1337, 2, [16, 16, 1]))
    out = ours([0.5, -0.5])
    assert out._op == 'affine' and len(out._prev) == 1 + 16 + 16   # b, the w, the x
    a = demo_losses(fastgrad.Value, ours, X, y, 20)
    b, their_weights = micrograd_demo(20)
    for (la, acc_a), (lb, acc_b) in zip(a, b):
        assert la == pytest.approx(lb, rel=1e-9)
        assert acc_a == acc_b
    for p, q in zip(ours.parameters(), their_weights):
        assert p.data == pytest.approx(q, rel=1e-9, abs=1e-12)


def test_make_moons_shape():
    X, y = make_moons(100, 0.1, seed=0)
    assert len(X) == len(y) == 100 and sorted(set(y)) == [-1, 1]
    assert make_moons(100, 0.1, seed=0) == (X, y)
    assert make_moons(100, 0.1, seed=1) != (X, y)


def chain_by_hand(start, ws, xs):
    return sum((wi * xi for wi, xi in zip(ws, xs)), start)


@pytest.mark.parametrize("xs", [
    "values", "floats", "ints", "mixed", "empty", "shorter", "numpy",
])
def test_sum_of_products_builds_micrograd_chain(Value, xs):
    import numpy as np
    from graphs import shape

    def make(V):
        b = V(0.25)
        ws = [V(w) for w in (0.5, -1.5, 2.0)]
        x = {"values": [V(1.0), V(-2.0), V(3.0)], "floats": [1.0, -2.0, 3.0],
             "ints": [1, -2, 3], "mixed": [V(1.0), -2, 3.0], "empty": [],
             "shorter": [1.0, -2.0], "numpy": list(np.array([1.0, -2.0, 3.0]))}[xs]
        return b, ws, x
    b, ws, x = make(Value)
    fast = Value._sum_of_products(b, ws, x)
    mb, mws, mx = make(micrograd.engine.Value)
    slow = chain_by_hand(mb, mws, mx)
    assert fast.data == slow.data
    assert shape(fast) == shape(slow)
    if xs == "empty":
        assert fast is b
    fast.backward()
    slow.backward()
    assert [w.grad for w in ws] == [w.grad for w in mws]
    assert b.grad == mb.grad


def test_sum_of_products_bad_input(Value):
    from fractions import Fraction
    b, ws = Value(1.0), [Value(2.0), Value(3.0)]
    # an operand the fast path does not take goes through the operators, as micrograd's would
    assert Value._sum_of_products(b, ws, [Fraction(1, 2), 1.0]).data == 1.0 + 1.0 + 3.0
    with pytest.raises(TypeError):
        Value._sum_of_products(b, ws, ["a", 1.0])
    with pytest.raises(OverflowError):
        Value._sum_of_products(b, ws, [1.0, 10 ** 400])
    y = b * 2.0
    y.backward()
    assert b.grad == 2.0


@pytest.mark.parametrize("which", [pytest.param("compiled", marks=pytest.mark.compiled),
                                   "reference"])
def test_using_builds_the_same_modules_on_another_engine(which):
    # nn.using(V): micrograd's modules, same draws and reprs, parameters of class V
    V = pytest.importorskip("fastgrad._core").Value if which == "compiled" else reference.Value
    ours = build(nn.using(V).MLP, 7, 2, [3, 1])
    default = build(nn.MLP, 7, 2, [3, 1])
    assert all(type(p) is V for p in ours.parameters())
    assert repr(ours) == repr(default)
    assert [p.data for p in ours.parameters()] == [p.data for p in default.parameters()]
    out = ours([0.5, -1.0])
    assert type(out) is V
    out.backward()
    assert any(p.grad != 0 for p in ours.parameters())
