"""Graphs over their life on either engine: handles dropped mid-sweep, recompute without
the leaves' handles, pickling, deep chains and wide sums, flat memory over training,
threads. (The compiled arena's internals are in test_tape.py.)"""
import copy
import gc
import math
import pickle
import random
import sys
import threading

import pytest

from fastgrad import demo, nn


def test_handles_dropped_during_a_sweep(Value):
    # a Python _backward drops the only handles of nodes in the graph being swept (they
    # live on through their parents), and the last reference to another whole graph
    # (which is freed, its slots going back to the free list, mid-sweep)
    from micrograd.engine import Value as M

    def build(V, hold):
        a, b = V(0.5), V(-1.5)
        hold += [a * b, (a + b) * a]
        c = hold[-2] + hold[-1]
        out = V(c.data * 2.0, (c,), 'double')

        def _backward():
            hold.clear()
            c.grad += 2.0 * out.grad
        out._backward = _backward
        return a, b, (out * b + c) * a

    other = [Value(float(k)) * 2.0 for k in range(2000)]
    hold = [other]
    a, b, y = build(Value, hold)
    ma, mb, my = build(M, [])
    y.backward()
    my.backward()
    assert (a.grad, b.grad) == (pytest.approx(ma.grad, rel=1e-12), pytest.approx(mb.grad, rel=1e-12))
    assert hold == []
    del other
    y.backward()                      # the same graph again, its inner handles gone
    my.backward()
    assert (a.grad, b.grad) == (pytest.approx(ma.grad, rel=1e-12), pytest.approx(mb.grad, rel=1e-12))


def test_recompute_after_the_leaves_handles_are_gone(Value):
    a, b = Value(0.25), Value(-2.0)
    y = ((a * b).tanh() + a ** 2) * b
    first = y.data
    del a, b                           # the leaves live on as y's children
    y.recompute()
    assert y.data == first
    leaf = {v.data: v for v in leaves_of(y)}  # handles re-made through _prev
    leaf[0.25].data, leaf[-2.0].data = 0.5, 3.0
    y.recompute()
    assert y.data == (math.tanh(0.5 * 3.0) + 0.5 ** 2) * 3.0


def leaves_of(root):
    seen, stack, leaves = set(), [root], []
    while stack:
        v = stack.pop()
        if v not in seen:
            seen.add(v)
            stack.extend(v._prev)
            if not v._prev:
                leaves.append(v)
    return leaves


def test_pickle_leaf_and_module(Value):
    v = Value(1.5, label='w')
    v.grad = -0.25
    w = pickle.loads(pickle.dumps(v))
    assert (w.data, w.grad, w.label) == (1.5, -0.25, 'w')
    with pytest.raises(TypeError, match="leaf"):
        pickle.dumps(v * 2)
    random.seed(3)
    m = nn.MLP(2, [3, 1])
    m.parameters()[0].grad = 0.5
    m2 = pickle.loads(pickle.dumps(m))
    assert [(p.data, p.grad) for p in m2.parameters()] == [(p.data, p.grad) for p in m.parameters()]
    assert repr(m2) == repr(m)


def test_copy_and_deepcopy_as_micrograd(Value):
    # copy.copy and copy.deepcopy go through the pickle protocol: a leaf copies to a new
    # leaf with its data, grad and label; a Module deep-copies to a model of its own that
    # trains as micrograd's deep copy does, leaving the original as it was; a graph node
    # refuses, as it does pickling
    from micrograd import nn as mnn
    v = Value(1.5, label='w')
    v.grad = -0.25
    for c in (copy.copy(v), copy.deepcopy(v)):
        assert c is not v and type(c) is Value and (c.data, c.grad, c.label) == (1.5, -0.25, 'w')
        c.data, c.grad = 2.0, 1.0
        assert (v.data, v.grad) == (1.5, -0.25)
    for how in (copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="only leaf Values can be pickled or copied"):
            how(v * 2)
    runs = []
    for N in (nn, mnn):
        random.seed(3)
        m = N.MLP(2, [3, 1])
        before = [(p.data, p.grad) for p in m.parameters()]
        m2 = copy.deepcopy(m)
        assert repr(m2) == repr(m) and not set(map(id, m2.parameters())) & set(map(id, m.parameters()))
        loss = sum((m2([x, -x]) - x) ** 2 for x in (0.5, -1.0, 2.0))
        m2.zero_grad()
        loss.backward()
        for p in m2.parameters():
            p.data -= 0.1 * p.grad
        assert [(p.data, p.grad) for p in m.parameters()] == before
        runs.append([(p.data, p.grad) for p in m2.parameters()])
    assert runs[0] == runs[1]


def chain(Value, n):
    x = Value(1.0)
    y = x
    for _ in range(n):
        y = y * 1.0000001 + 0.5
    return x, y


def test_deep_chain(engine):
    # four nodes per step: 10M nodes on the compiled engine, 200k on the reference
    Value, steps = engine.Value, 2_500_000 if engine.compiled else 50_000
    x, y = chain(Value, steps)
    y.backward()
    assert x.grad == pytest.approx(1.0000001 ** steps, rel=1e-9)
    del y                                     # freeing is iterative too
    x2, y2 = chain(Value, 10)
    y2.backward()
    assert x2.grad == pytest.approx(1.0000001 ** 10)


def test_wide_sum(engine):
    Value, n = engine.Value, engine.large
    xs = [Value(1.0) for _ in range(n)]
    s = sum(xs)
    s.backward()
    assert s.data == n
    assert xs[0].grad == xs[-1].grad == 1.0


def rss_kb():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import resource
    return pages * resource.getpagesize() // 1024


@pytest.mark.unsanitized
def test_training_memory_is_flat():
    random.seed(1)
    model = nn.MLP(2, [16, 16, 1])
    X = [(random.uniform(-1, 1), random.uniform(-1, 1)) for _ in range(8)]
    y = [1 if a * b > 0 else -1 for a, b in X]
    for k in range(200):
        demo.step(model, X, y, k % 100)
    gc.collect()
    after_200 = rss_kb()
    for k in range(1800):
        demo.step(model, X, y, k % 100)
    gc.collect()
    assert rss_kb() - after_200 < 4 * 1024, "resident memory grew by more than 4 MB"


def test_threads_build_and_backpropagate_separately(Value):
    def work(seed, out):
        rnd = random.Random(seed)
        for _ in range(30):
            xs = [Value(rnd.uniform(-1, 1)) for _ in range(20)]
            y = sum((x * x).tanh() for x in xs)
            y.backward()
            out.append((y.data, [x.grad for x in xs]))

    expected = {}
    for seed in range(4):
        expected[seed] = []
        work(seed, expected[seed])
    results = {seed: [] for seed in range(4)}
    threads = [threading.Thread(target=work, args=(s, results[s])) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def run_threads(work, n, switch=1e-6):
    """Runs work(k) in n threads at once, switching between them as often as the
    interpreter allows; returns their results by k, re-raising the first failure."""
    results, errors = {}, []

    def target(k):
        try:
            results[k] = work(k)
        except BaseException as e:                   # surfaced below, not lost in a thread
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(switch)
    try:
        threads = [threading.Thread(target=target, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        sys.setswitchinterval(old)
    if errors:
        raise errors[0]
    assert len(results) == n, "a thread did not finish"
    return results


def test_threads_replay_graphs_over_shared_parameters(Value):
    # Threads build graphs over one parameter set, which they only read, then replay them
    # (new inputs, recompute, backward) while other threads do the same: every thread's
    # outputs and input grads equal a run alone. backward() also adds into the shared
    # parameters' grads; the compiled engine sweeps a graph of built-in ops without
    # releasing the GIL, so those sums are exact up to order. (The reference engine's
    # `+=` in Python, like micrograd's, is not atomic across threads: not checked there.)
    rnd = random.Random(11)
    params = [Value(rnd.uniform(-1, 1)) for _ in range(24)]

    def work(k):
        rnd = random.Random(k)
        xs = [Value(0.0) for _ in range(3)]
        y = Value._sum_of_products(Value(0.0), params[:12], [xs[j % 3] for j in range(12)])
        y = sum(((p * xs[j % 3]).tanh() for j, p in enumerate(params[12:])), y)
        y = (y * y + 1.0).relu()
        out = []
        for _ in range(40):
            for x in xs:
                x.data, x.grad = rnd.uniform(-1, 1), 0.0
            y.recompute()
            y.backward()
            out.append((y.data, [x.grad for x in xs]))
        return out

    def param_grads():
        return [p.grad for p in params]

    for p in params:
        p.grad = 0.0
    alone = {k: work(k) for k in range(4)}
    total = param_grads()
    for p in params:
        p.grad = 0.0
    together = run_threads(work, 4)
    assert together == alone
    if Value.__module__ == "fastgrad._core":
        assert param_grads() == [pytest.approx(g, rel=1e-9, abs=1e-12) for g in total]


def test_backward_inside_a_custom_backward(Value):
    # a _backward that starts another backward (on a separate graph sharing a leaf): the
    # inner ordering must not disturb the outer one
    def run(V):
        a, b = V(0.5), V(2.0)
        side = (a * b).tanh()
        out = V(a.data * 3, (a,), 'triple')

        def _backward():
            side.backward()
            a.grad += 3 * out.grad
        out._backward = _backward
        y = (out + b) * b
        y.backward()
        y.backward()
        return a.grad, b.grad, side.grad
    from fastgrad.reference import Value as R
    assert run(Value) == pytest.approx(run(R), rel=1e-12)
