"""recompute(): a recorded graph re-evaluated from new leaf data equals the same graph
built again from that data; then backward() equals micrograd's on the rebuilt graph."""
import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fastgrad import reference
from graphs import Magnitudes, close, native_programs, run, trace


def replay_vs_rebuild(Value, program, shift):
    leaf_data, steps = program
    nodes, skips, _ = run(Value, program)
    root = nodes[-1]
    root.backward()                             # grads that recompute must reset
    leaves = nodes[:len(leaf_data)]
    old_grads = [v.grad for v in leaves]
    new_data = [x + shift for x in leaf_data]
    try:
        fresh, _, _ = run(Value, (new_data, steps), skips)
    except (ArithmeticError, ValueError):
        assume(False)                           # the new data breaks the program itself
    before = [v.data for v in nodes]
    for v, x in zip(leaves, new_data):
        v.data = x
    root.recompute()
    reachable = {id(v) for v in trace(root)[0]}
    for k, (v, w) in enumerate(zip(nodes, fresh)):
        if id(v) in reachable:
            assert close(v.data, w.data, 0.0, rel=1e-12), (k, v.data, w.data)
            if k >= len(leaves):
                assert v.grad == 0.0
        elif k >= len(leaves):
            assert v.data == before[k]          # not under the root: untouched
    root.backward()
    fresh[-1].backward()
    # grads are sums whose order differs; compare relative to the sum of |terms|, tracked
    # on reference-engine copies of both graphs (old leaves, then new ones)
    old_m, new_m = Magnitudes(), Magnitudes()
    old_ref = run(reference.Value, program, skips)[0]
    new_ref = run(reference.Value, (new_data, steps), skips)[0]
    old_m.backward(old_ref[-1])
    new_m.backward(new_ref[-1])
    for k, (v, w) in enumerate(zip(nodes, fresh)):
        if id(v) not in reachable:
            continue
        kept = old_grads[k] if k < len(leaves) and v is not root else 0.0   # root.grad is set
        expected = w.grad + kept
        scale = new_m.of(new_ref[k]) + (old_m.of(old_ref[k]) if kept else 0.0)
        assert close(v.grad, expected, scale, rel=1e-9), (k, v.grad, expected)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(native_programs, st.sampled_from([0.0, 0.25, -0.5, 1.0]))
def test_recompute_equals_rebuilding(Value, program, shift):
    replay_vs_rebuild(Value, program, shift)


def test_replay_loop(Value):
    # build once, then recompute / backward / update, as a training loop would
    w, b = Value(0.3), Value(-0.2)
    x, target = Value(1.5), Value(0.5)
    loss = ((w * x + b).tanh() - target) ** 2
    for _ in range(50):
        loss.recompute()
        w.grad = b.grad = 0.0
        loss.backward()
        for p in (w, b):
            p.data -= 0.5 * p.grad
    fresh = ((Value(w.data) * 1.5 + b.data).tanh() - 0.5) ** 2
    loss.recompute()
    assert loss.data == pytest.approx(fresh.data, rel=1e-12)
    assert loss.data < 1e-4


def test_recompute_is_all_or_nothing(Value):
    x = Value(1.0)
    y = (x + 1.0) ** -1 + (x * 2.0).exp()
    nodes = trace(y)[0] - {x}
    before = {id(v): v.data for v in nodes}
    for bad, error in ((-1.0, ZeroDivisionError),     # (x + 1) ** -1 divides by zero
                       (400.0, OverflowError)):       # exp(800) overflows
        x.data = bad
        with pytest.raises(error):
            y.recompute()
        assert {id(v): v.data for v in nodes} == before


def test_recompute_refuses_custom_ops(Value):
    a = Value(0.5)
    t = math.tanh(a.data)
    out = Value(t, (a,), 'tanh')
    out._backward = lambda: None
    y = out * 2.0
    with pytest.raises(TypeError, match="custom op 'tanh'"):
        y.recompute()
    assert y.data == 2 * t
    leafish = Value(3.0, (), 'const') * a       # a custom node without children is a leaf
    a.data = 2.0
    leafish.recompute()
    assert leafish.data == 6.0


def test_moons_example_follows_micrographs_loss_curve():
    # fastgrad.demo.train (build once, recompute / backward / step; what
    # examples/moons_replay.py and `make demo` run) against micrograd's own loop, which
    # rebuilds the graph every step
    from fastgrad.demo import train
    from test_nn import micrograd_demo

    _, ours = train(steps=20, seed=1337)
    theirs, _ = micrograd_demo(20)
    for (la, acc_a), (lb, acc_b) in zip(ours, theirs):
        assert la == pytest.approx(lb, rel=1e-9)
        assert acc_a == acc_b


@pytest.mark.unsanitized
def test_replayed_steps_keep_memory_flat():
    # 10,000 replayed steps of a small model, each also building and dropping a fresh
    # graph (whose cached order must go with it): resident memory stays put
    import gc
    import random

    from fastgrad import nn, optim
    from fastgrad.engine import Value
    from test_tape import rss_kb

    random.seed(0)
    model = nn.MLP(2, [8, 1])
    x = [Value(0.3), Value(-0.7)]
    loss = (1 + -1.0 * model(x)).relu()
    opt = optim.SGD(model.parameters(), lr=0.01)

    def steps(n):
        for _ in range(n):
            loss.recompute()
            opt.zero_grad()
            loss.backward()
            opt.step()
            side = model(x) * 2.0
            side.backward()
    def cached():
        import fastgrad
        return fastgrad._core._tape_stats()["cached"] if fastgrad.ENGINE == "compiled" else 0
    steps(1000)
    gc.collect()
    before, cached_before = rss_kb(), cached()
    steps(9000)
    gc.collect()
    assert rss_kb() - before < 2 * 1024, "resident memory grew by more than 2 MB"
    assert cached() == cached_before            # only the live loss keeps an order
