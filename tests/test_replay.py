"""recompute(): a recorded graph re-evaluated from new leaf data equals the same graph
built again from that data; then backward() equals micrograd's on the rebuilt graph."""
import math
import struct
import sys

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


@pytest.mark.parametrize("op, bad, error", [
    (lambda x: (x + 1.0) ** -1, -1.0, ZeroDivisionError),
    (lambda x: (x * 2.0).exp(), 400.0, OverflowError),
    (lambda x: x.log(), -1.0, ValueError),
    (lambda x: x.sqrt(), -1.0, ValueError),
    (lambda x: x ** (x + 1.0), -1.0, ValueError),       # a Value exponent needs a base > 0
], ids=["pow", "exp", "log", "sqrt", "powv"])
def test_recompute_is_all_or_nothing_for_every_op_that_can_raise(Value, op, bad, error):
    # steps of ops that cannot raise before and after the one that does
    x = Value(1.0)
    y = (x * 3.0 + 0.5).tanh() * op(x) + x.relu()
    nodes = trace(y)[0] - {x}
    y.backward()
    before = {id(v): (v.data, v.grad) for v in nodes}
    x.data = bad
    with pytest.raises(error):
        y.recompute()
    assert {id(v): (v.data, v.grad) for v in nodes} == before
    core = sys.modules.get("fastgrad._core")
    if core is not None and type(y) is core.Value:
        assert core._test_replay_saves(y) is True


def test_a_replay_of_ops_that_cannot_raise_saves_nothing():
    # (what recompute() of micrograd's MLP graph gets: no copy of its values and grads)
    core = pytest.importorskip("fastgrad._core")
    def f(w, x, b):
        return ((w * x + b).relu() + (w * b).tanh() + (x + b).sigmoid() + abs(x) + x * -1.0) * 0.5

    w, x, b = core.Value(0.5), core.Value(-2.0), core.Value(0.25)
    y = f(w, x, b)
    assert core._test_replay_saves(y) is None           # (no replay yet)
    y.recompute()
    assert core._test_replay_saves(y) is False
    w.data = 2.0
    y.recompute()
    y.backward()
    w2, x2, b2 = core.Value(2.0), core.Value(-2.0), core.Value(0.25)
    fresh = f(w2, x2, b2)
    fresh.backward()
    assert bits(y.data) == bits(fresh.data)
    assert [bits(v.grad) for v in (w, x, b)] == [bits(v.grad) for v in (w2, x2, b2)]


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
    # graph (whose cached order must go with it) and replaying a fresh one (whose replay
    # must go with it): resident memory stays put
    import gc
    import random

    from fastgrad import nn, optim
    from fastgrad.engine import Value
    from test_lifecycle import rss_kb

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
            side.recompute()
    def cached():
        import fastgrad
        if fastgrad.ENGINE != "compiled":
            return 0, 0
        stats = fastgrad._core._tape_stats()
        return stats["cached"], stats["replayed"]
    steps(1000)
    gc.collect()
    before, cached_before = rss_kb(), cached()
    steps(9000)
    gc.collect()
    assert rss_kb() - before < 2 * 1024, "resident memory grew by more than 2 MB"
    assert cached() == cached_before            # only the live loss keeps an order and a replay


# --- backward() after recompute(): the replay's recorded derivatives --------------------
# recompute() records every node's local derivatives, and the next backward() applies them
# without dispatching on ops, in steps regrouped by op (only steps that commute are
# swapped). It must be the rules' sweep to the bit, and it must not be used once a value
# may have changed (data assigned, an optimizer step, another recompute()).

def bits(x):
    return struct.pack("<d", x)


def replay_is_current(root):
    """Whether root's next backward() sweeps its replay (a reference-engine root: True,
    its backward has one path)."""
    core = sys.modules.get("fastgrad._core")
    if core is None or type(root) is not core.Value:
        return True
    return core._test_replay_current(root)


# The bit tests compare the compiled engine's two backward paths; on the reference, which
# has one, they would compare a thing with itself.
@pytest.fixture(scope="module")
def Compiled():
    return pytest.importorskip("fastgrad._core").Value


def replayed_and_ruled(root):
    """The grads of every node under root after backward() through root's replay, then,
    from the same grads, through the rules (the replay made stale by assigning a leaf
    its own data)."""
    root.backward()
    root.recompute()
    assert replay_is_current(root)
    nodes = list(trace(root)[0])
    before = [v.grad for v in nodes]
    root.backward()
    replayed = [v.grad for v in nodes]
    for v, g in zip(nodes, before):
        v.grad = g
    nodes[0].data = nodes[0].data
    assert not replay_is_current(root)
    root.backward()
    return replayed, [v.grad for v in nodes]


@pytest.mark.compiled
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(native_programs, st.booleans())
def test_replayed_backward_is_the_rules_to_the_bit(Compiled, program, holes):
    nodes, _, _ = run(Compiled, program, holes=holes)
    replayed, ruled = replayed_and_ruled(nodes[-1])
    assert list(map(bits, replayed)) == list(map(bits, ruled))


def shared_children_graph(Value, leaf_data, n_ops, seed):
    """A random graph whose ops mostly share a few leaves (steps of one window of the
    replay add into the same grads, so swapping two of them would change their bits),
    with affine nodes over computed children. Its shape depends on the seed only;
    every value stays in [-1, 1]."""
    import random
    rnd = random.Random(seed)
    n_leaves = len(leaf_data)
    nodes = [Value(x) for x in leaf_data]

    def pick():
        return nodes[rnd.randrange(n_leaves)] if rnd.random() < 0.7 else rnd.choice(nodes)
    for _ in range(n_ops):
        a, b, c, d = pick(), pick(), pick(), pick()
        op = rnd.randrange(7)
        out = (a + b, a * b, (a * 0.5) ** 2, a.relu(), a, (a * 0.1).exp(),
               Value._affine(a, [b, c], [c, d]))[op]
        nodes.append(out.tanh())
    level = nodes[n_leaves:]
    while len(level) > 1:           # every node under the root, by a shallow sum
        level = [sum(level[k:k + 8], Value(0.0)).tanh() for k in range(0, len(level), 8)]
    return nodes, level[0]


@pytest.mark.parametrize("n_leaves", [2, 5, 40])
def test_recompute_of_a_large_graph_equals_rebuilding_it(Value, n_leaves):
    # (the replay regroups its steps by op: each node must still be re-evaluated after
    # all its children, an affine node after all of its children too)
    import random
    rnd = random.Random(n_leaves)
    old, new = ([rnd.uniform(-1, 1) for _ in range(n_leaves)] for _ in range(2))
    nodes, root = shared_children_graph(Value, old, 3000, seed=n_leaves)
    root.backward()
    root.recompute()
    for v, x in zip(nodes, new):
        v.data = x
    root.recompute()
    fresh, _ = shared_children_graph(Value, new, 3000, seed=n_leaves)
    assert [bits(v.data) for v in nodes] == [bits(v.data) for v in fresh]


def long_chain(Value, x, k):
    """Every node of k times v * 1.0001 + 0.5 from Value(x), then a log, then k times
    again: 4k + 1 steps, x first."""
    nodes = [Value(x)]
    for half in range(2):
        for _ in range(k):
            nodes.append(nodes[-1] * 1.0001)
            nodes.append(nodes[-1] + 0.5)
        if half == 0:
            nodes.append(nodes[-1].log())
    return nodes


def test_recompute_of_a_replay_too_large_for_the_cache_is_exact_and_all_or_nothing(Value):
    # a replay of more steps than the compiled engine's PREFETCH_STEPS is re-evaluated
    # by another loop than a small one: prefetching, and saving as it goes
    k = 34_000
    core = sys.modules.get("fastgrad._core")
    if core is not None and Value is core.Value:
        assert 4 * k + 1 > core._test_replay_prefetch_steps()
    nodes = long_chain(Value, 2.0, k)
    root = nodes[-1]
    root.backward()
    root.recompute()
    nodes[0].data = 3.0
    root.recompute()
    assert [bits(v.data) for v in nodes] == [bits(v.data) for v in long_chain(Value, 3.0, k)]
    root.backward()
    before = [(v.data, v.grad) for v in nodes]
    nodes[0].data = -1e6                # the log's input is then below 0, half way up
    with pytest.raises(ValueError):
        root.recompute()
    assert [(v.data, v.grad) for v in nodes[1:]] == before[1:]


@pytest.mark.compiled
@pytest.mark.parametrize("n_leaves", [2, 5, 40])
def test_replay_regrouping_keeps_every_bit_on_shared_children(Compiled, n_leaves):
    _, root = shared_children_graph(Compiled, [0.1 * k - 0.5 for k in range(n_leaves)], 3000,
                                    seed=n_leaves)
    replayed, ruled = replayed_and_ruled(root)
    assert list(map(bits, replayed)) == list(map(bits, ruled))


@pytest.mark.compiled
def test_replay_of_a_fused_model_keeps_every_bit():
    import random
    from fastgrad.engine import Value
    from fastgrad.nn import MLP
    random.seed(4)
    model = MLP(3, [16, 16, 1], fused=True)
    xs = [[Value(random.uniform(-1, 1)) for _ in range(3)] for _ in range(20)]
    loss = sum((model(x) - 0.5) ** 2 for x in xs)
    replayed, ruled = replayed_and_ruled(loss)
    assert list(map(bits, replayed)) == list(map(bits, ruled))


def small_graph(V):
    # micrograd's own ops only (it has no tanh or exp): the oracle runs it
    x, w, b = V(0.8), V(-1.3), V(1.4)
    h = (x * w + b).relu()
    y = h * w + (x * w) ** 2
    return (x, w, b), y


def zero_intermediates(root):
    for v in trace(root)[0]:
        if v._prev:
            v.grad = 0.0


def grads_of(vs):
    return [v.grad for v in vs]


def test_backward_sees_data_assigned_after_recompute(Value):
    # micrograd's closures read .data when backward() runs: a leaf assigned after
    # recompute() (and not recomputed) counts with its new data in the local derivatives
    # (a stale replay would use w's old data for x's grad)
    from micrograd.engine import Value as MG
    (x, w, b), y = small_graph(Value)
    y.backward()
    y.recompute()
    w.data = 2.5
    y.backward()
    (mx, mw, mb), my = small_graph(MG)
    my.backward()
    zero_intermediates(my)          # what recompute() does on unchanged data
    mw.data = 2.5
    my.backward()
    for ours, theirs in zip(grads_of((x, w, b)), grads_of((mx, mw, mb))):
        assert ours == pytest.approx(theirs, rel=1e-12)


def test_backward_after_an_optimizer_step_uses_the_new_parameters(Value):
    # an optimizer step between recompute() and backward(): the parameters' new data
    # counts, as in micrograd, where recompute() (data unchanged) only zeroes the grads of
    # the intermediate nodes
    from micrograd.engine import Value as MG
    from fastgrad.optim import SGD
    (x, w, b), y = small_graph(Value)
    opt = SGD([w, b], lr=0.1)
    y.backward()
    y.recompute()
    opt.step()
    y.backward()
    (mx, mw, mb), my = small_graph(MG)
    my.backward()
    zero_intermediates(my)
    for p in (mw, mb):
        p.data -= 0.1 * p.grad
    my.backward()
    assert [w.data, b.data] == [mw.data, mb.data]
    for ours, theirs in zip(grads_of((x, w, b)), grads_of((mx, mw, mb))):
        assert ours == pytest.approx(theirs, rel=1e-12)


def test_a_failed_recompute_leaves_other_replays_exact(Value):
    # y's replay is current; z shares y's nodes and fails to recompute, putting every value
    # back: y's replay is still current, and its backward still the rules' to the bit
    x = Value(0.5)
    h = (x * 3.0).tanh()
    y = h * h + x
    z = (x * 2.0).exp() + h
    for root in (y, z):
        root.backward()
        root.recompute()
    x.data = 400.0                  # z's exp(800) overflows; y's tanh saturates
    y.recompute()
    z_before = z.data
    with pytest.raises(OverflowError):
        z.recompute()
    assert z.data == z_before and h.data == 1.0
    assert replay_is_current(y)
    x.grad = 0.0
    y.backward()
    replayed = x.grad
    x.grad = 0.0
    x.data = x.data                 # (stale: the rules' sweep)
    y.backward()
    assert bits(replayed) == bits(x.grad)


def test_a_replay_goes_with_its_root():
    import fastgrad
    if fastgrad.ENGINE != "compiled":
        pytest.skip("the compiled engine's cache")
    from fastgrad._core import Value, _tape_stats
    x = Value(0.5)
    y = (x * x).tanh() + x
    before = _tape_stats()["replayed"]
    y.recompute()
    assert _tape_stats()["replayed"] == before + 3  # mul, tanh, add
    del y
    assert _tape_stats()["replayed"] == before
