"""fastgrad.functional's fused layers on both engines and both Value classes: values bit
for bit equal to the list expressions they stand for (microgpt's linear, rmsnorm and
softmax), grads equal to the expressions' to rounding, shape errors that change
nothing, and allocation failures that leave no half-built layer."""
import gc
import math
import random
import struct
import sys

import numpy as np
import pytest

from fastgrad import functional as F
from fastgrad import no_grad, reference

compiled = pytest.mark.compiled


def classes():
    out = [pytest.param(reference.Value, id="reference-Value"),
           pytest.param(reference.GptValue, id="reference-GptValue")]
    try:
        from fastgrad import _core
        out += [pytest.param(_core.Value, id="compiled-Value", marks=compiled),
                pytest.param(_core.GptValue, id="compiled-GptValue", marks=compiled)]
    except ImportError:
        pass
    return out


@pytest.fixture(params=classes())
def V(request):
    return request.param


def bits(x):
    return struct.pack("<d", x)


# the list expressions, as microgpt writes them
def linear(x, w):
    return [sum(wi * xi for wi, xi in zip(row, x)) for row in w]


def rmsnorm(x, eps=1e-5):
    ms = sum(xi * xi for xi in x) / len(x)
    scale = (ms + eps) ** -0.5
    return [xi * scale for xi in x]


def softmax(logits):
    top = max(v.data for v in logits)
    exps = [(v - top).exp() for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


def cross_entropy(logits, target):        # fastgrad's: log-sum-exp minus the shifted logit
    top = max(v.data for v in logits)
    shifted = [v - top for v in logits]
    exps = [s.exp() for s in shifted]
    return sum(exps[1:], exps[0]).log() - shifted[target]


def grads_of(outputs, leaves, V):
    """The leaves' grads from backward() of a weighted sum of the outputs."""
    for p in leaves:
        p.grad = 0.0
    total = sum((o * (1.0 + 0.37 * k) for k, o in enumerate(outputs)), V(0.0))
    total.backward()
    return [p.grad for p in leaves]


def same_values_and_grads(fused, plain, leaves, V, rel=1e-12):
    a, b = fused(), plain()
    assert [bits(v.data) for v in a] == [bits(v.data) for v in b]
    ga, gb = grads_of(a, leaves, V), grads_of(b, leaves, V)
    assert ga == [pytest.approx(g, rel=rel, abs=1e-300) for g in gb]


@pytest.mark.parametrize("seed", range(5))
def test_linear_equals_the_sum_of_products(V, seed):
    rnd = random.Random(seed)
    n, m = rnd.randint(1, 20), rnd.randint(1, 8)
    x = [V(rnd.gauss(0, 1)) for _ in range(n)]
    w = [[V(rnd.gauss(0, 1)) for _ in range(n)] for _ in range(m)]
    same_values_and_grads(lambda: F.linear(x, w), lambda: linear(x, w), x + sum(w, []), V)
    # a number in x becomes a leaf, as wi * xi makes one
    xs = [v.data if k % 3 == 0 else v for k, v in enumerate(x)]
    same_values_and_grads(lambda: F.linear(xs, w), lambda: linear(xs, w), sum(w, []), V)


def test_the_helpers_take_any_sequence_shape(V):
    # the helpers find their engine from the first Value in a fast path that indexes w and
    # x; rows that are tuples or iterators, w a generator or empty, and x a tuple, take
    # the other path, with the same results
    x = [V(0.5), V(-1.5), V(2.0)]
    w = [[V(0.25), V(1.0), V(-0.5)], [V(2.0), V(0.0), V(1.5)]]
    expect = [v.data for v in linear(x, w)]
    for rows in (w, [tuple(r) for r in w], (r for r in w), [iter(r) for r in w],
                 tuple(tuple(r) for r in w)):
        assert [v.data for v in F.linear(tuple(x), rows)] == expect
    assert F.linear(x, []) == [] and F.linear(x, iter([])) == []
    assert [v.data for v in F.softmax(tuple(x))] == [v.data for v in F.softmax(x)]
    assert [v.data for v in F.rmsnorm(tuple(x))] == [v.data for v in F.rmsnorm(x)]
    assert F.cross_entropy(tuple(x), 1).data == F.cross_entropy(x, 1).data


@pytest.mark.parametrize("seed", range(4))
def test_linear_over_a_matrix_equals_linear_over_its_rows(V, seed):
    # the same values to the bit and the same grads (the same nodes, the same sums in the
    # same order), over leaf weights and, every other seed, weights that are nodes
    rnd = random.Random(seed)
    n, m = rnd.randint(1, 20), rnd.randint(1, 8)
    base = [V(rnd.gauss(0, 1)) for _ in range(n)]
    x = [b * 1.5 if k % 2 else b for k, b in enumerate(base)]
    x = [v.data if k % 5 == 3 else v for k, v in enumerate(x)]
    leaves = [[V(rnd.gauss(0, 1)) for _ in range(n)] for _ in range(m)]
    w = leaves if seed % 2 == 0 else [[v * -0.5 for v in row] for row in leaves]
    W = F.matrix(w)
    # (the nodes among x and w too: grads_of zeroes what it reads, and they accumulate)
    params = base + [v for v in x if not isinstance(v, float)] + sum(leaves, [])
    params += sum(w, []) if w is not leaves else []
    a, b = F.linear(x, W), F.linear(x, w)
    assert [bits(v.data) for v in a] == [bits(v.data) for v in b]
    assert grads_of(a, params, V) == grads_of(b, params, V)
    same_values_and_grads(lambda: F.linear(x, W), lambda: linear(x, w), params, V)
    with no_grad():
        assert [bits(v.data) for v in F.linear(x, W)] == [bits(v.data) for v in b]


@pytest.mark.parametrize("seed", range(6))
def test_linear_with_relu_is_relu_of_linear(V, seed):
    # relu=True folds [s.relu() for s in linear(x, w)] into the rows' nodes: the ReLU's
    # values to the bit, and on a fresh graph the same grads to the bit (the rule gates
    # grad by relu_da(value) before the products, as the ReLU node hands it to its row);
    # over rows and a Matrix, numbers in x, and rows whose sum is negative or exactly 0
    rnd = random.Random(seed)
    n, m = rnd.randint(1, 12), rnd.randint(2, 9)
    x = [V(rnd.gauss(0, 1)) for _ in range(n)]
    if seed % 2:
        x = [v.data if k % 3 == 1 else v for k, v in enumerate(x)]
    w = [[V(rnd.gauss(0, 1)) for _ in range(n)] for _ in range(m)]
    w[0] = [V(0.0) for _ in range(n)]                # a sum of 0: relu'(0) is 0
    w[1] = [V(-v.data) for v in w[2]]                # -(row 2's sum): one of them is gated
    xv = {v for v in x if not isinstance(v, float)}
    numbers = {v for v in x if isinstance(v, float)}
    params = list(xv) + sum(w, [])
    kids = (lambda v: v._prev) if hasattr(V, "_prev") else (lambda v: set(v._children))
    for weights in (w, F.matrix(w)):
        def composed():
            return [s.relu() for s in F.linear(x, weights)]
        folded = F.linear(x, weights, relu=True)
        assert [bits(v.data) for v in folded] == [bits(v.data) for v in composed()]
        assert min(s.data for s in F.linear(x, weights)) < 0
        assert grads_of(folded, params, V) == grads_of(composed(), params, V)
        same_values_and_grads(lambda: F.linear(x, weights, relu=True),
                              lambda: [s.relu() for s in linear(x, w)], params, V)
        # a row is one node over its weights and x (the numbers' leaves): the ReLU has no
        # node of its own
        for o, row in zip(folded, w):
            assert set(row) | xv <= kids(o)
            assert {k.data for k in kids(o) - set(row) - xv} <= numbers


def test_linear_with_relu_gates_at_the_rows_value_then(V):
    # micrograd's ReLU rule reads its node's data when backward runs (out.data > 0), so
    # an assigned value moves the gate: a folded row gates as the ReLU node of
    # [s.relu() for s in linear(x, w)] does, on every engine (the fuzz target found the
    # reference gating by the value the row was made with)
    for made, assigned in ((1.0, 0.0), (-1.0, 0.5), (2.0, -3.0), (0.0, 1.0)):
        gate = float(assigned > 0)
        grads = []
        for fold in (True, False):
            x, w = V(made), V(1.0)
            out = F.linear([x], [[w]], relu=True)[0] if fold else F.linear([x], [[w]])[0].relu()
            out.data = assigned
            out.backward()
            grads.append((x.grad, w.grad))
            if fold and hasattr(out, "_local_grads"):       # (children w, x)
                assert out._local_grads == (made * gate, 1.0 * gate)
        assert grads[0] == grads[1] == (gate, made * gate)


def test_linear_with_relu_has_the_gated_local_grads(V):
    # microgpt's _local_grads of a folded row: the row's by its children, times the
    # ReLU's derivative (1 where the sum is positive, 0 elsewhere)
    if not hasattr(V, "_local_grads"):
        pytest.skip("fastgrad.engine's Value has no _local_grads")
    x = [V(0.5), V(-1.5), V(2.0)]
    w = [[V(1.0), V(0.5), V(0.25)], [V(-1.0), V(0.5), V(0.25)]]
    for weights in (w, F.matrix(w)):
        plain, folded = F.linear(x, weights), F.linear(x, weights, relu=True)
        assert [v.data for v in folded] == [0.0 + 0.5 - 0.75 + 0.5, 0.0]
        for p, f in zip(plain, folded):
            assert f._local_grads == tuple(d * (p.data > 0) for d in p._local_grads)


@pytest.mark.parametrize("seed", range(6))
def test_linear_with_a_bias_is_linear_plus_the_bias(V, seed):
    # linear(x, w, bias) is [s + b for s, b in zip(linear(x, w), bias)] in the rows' nodes
    # (a residual connection): the values to the bit and, on a fresh graph, the grads,
    # over rows and a Matrix of leaf weights, with biases that are nodes (their graphs
    # must be swept: the pass does not mark a Matrix's leaf weights, but must mark a
    # bias), and with relu
    rnd = random.Random(seed)
    n, m = rnd.randint(1, 10), rnd.randint(1, 7)
    base = [V(rnd.gauss(0, 1)) for _ in range(m)]
    bias = [b * 1.5 if k % 2 else b for k, b in enumerate(base)]   # nodes and leaves
    x = [V(rnd.gauss(0, 1)) for _ in range(n)]
    if seed % 2:
        x = [v.data if k % 3 == 1 else v for k, v in enumerate(x)]
    w = [[V(rnd.gauss(0, 1)) for _ in range(n)] for _ in range(m)]
    params = base + [v for v in x if not isinstance(v, float)] + sum(w, [])
    params += [b for b in bias if b not in base]
    kids = (lambda v: v._prev) if hasattr(V, "_prev") else (lambda v: set(v._children))
    for weights in (w, F.matrix(w)):
        for relu in (False, True):
            def composed():
                sums = F.add(F.linear(x, weights), bias)
                return [s.relu() for s in sums] if relu else sums
            folded = F.linear(x, weights, bias, relu=relu)
            assert [bits(v.data) for v in folded] == [bits(v.data) for v in composed()]
            assert grads_of(folded, params, V) == grads_of(composed(), params, V)
            assert relu or all(p.grad != 0 for p in base)     # (reached through the bias)
            same_values_and_grads(
                lambda: F.linear(x, weights, bias, relu=relu),
                lambda: [(s + b).relu() if relu else s + b for s, b in zip(linear(x, w), bias)],
                params, V)
            # one node per row: its weights, x, its bias and the 1.0 its bias is times
            for o, row, b in zip(folded, w, bias):
                others = kids(o) - set(row) - set(x) - {b}
                assert {k.data for k in others} <= {1.0} | {v for v in x if isinstance(v, float)}
                assert b in kids(o)


def test_the_rows_hold_their_biases(V):
    # a row holds its bias (a Matrix's rows hold no weight, so a bias is the row's own):
    # it stays alive and swept with the list of biases gone, and dies with the rows
    x = [V(0.5), V(-1.0)]
    W = F.matrix([[V(0.25), V(2.0)], [V(-1.0), V(0.5)]])
    src = V(3.0)
    for weights in (W, [list(r) for r in W]):
        before = arena_live(V)
        bias = [src * 2.0, src * -1.0]
        out = F.linear(x, weights, bias)
        del bias
        gc.collect()
        src.grad = 0.0
        sum(out, V(0.0)).backward()
        assert [o.data for o in out] == [0.125 - 2.0 + 6.0, -0.5 - 0.5 - 3.0]
        assert src.grad == 2.0 - 1.0
        del out
        assert arena_live(V) == before


def test_linear_with_a_bias_has_the_bias_term_in_its_local_grads(V):
    if not hasattr(V, "_local_grads"):
        pytest.skip("fastgrad.engine's Value has no _local_grads")
    x = [V(0.5), V(-1.5)]
    w = [[V(1.0), V(0.5)], [V(-1.0), V(0.25)]]
    bias = [V(2.0), V(-3.0)]
    for weights in (w, F.matrix(w)):
        out = F.linear(x, weights, bias, relu=True)
        assert [o.data for o in out] == [0.5 - 0.75 + 2.0, 0.0]
        # (w0, x0, w1, x1, b, 1.0): by w the x's, by x the w's, by b 1.0, by the 1.0 b;
        # all times the ReLU's derivative
        assert out[0]._local_grads == (0.5, 1.0, -1.5, 0.5, 1.0, 2.0)
        assert out[1]._local_grads == (0.0,) * 6
        assert out[0]._children[:5] == (w[0][0], x[0], w[0][1], x[1], bias[0])


def test_a_matrix_is_a_read_only_sequence_of_its_rows(V):
    import pickle
    w = [[V(0.5), V(-1.0), V(2.0)], [V(0.25), V(0.0), V(-3.0)]]
    W = F.matrix(w)
    assert W.shape == (2, 3) and len(W) == 2 and type(W).__name__ == "Matrix"
    assert all(a is b for ra, rb in zip(W, w) for a, b in zip(ra, rb))
    assert W[1] == tuple(w[1]) and W[-1][0] is w[1][0] and W.rows == tuple(map(tuple, w))
    assert repr(W) == f"Matrix(2 x 3 of {V.__name__})"
    x = [V(1.0), V(2.0), V(3.0)]
    before = [v.data for v in F.linear(x, W)]
    w[0][0] = V(100.0)                  # the Matrix holds the Values it was made from
    del w[1]
    assert [v.data for v in F.linear(x, W)] == before
    copy = pickle.loads(pickle.dumps(W))
    assert copy.shape == W.shape and [[v.data for v in r] for r in copy] == \
        [[v.data for v in r] for r in W]
    with pytest.raises(TypeError):
        W[0] = (V(1.0),) * 3
    with pytest.raises(AttributeError):
        W.rows = ()


@pytest.mark.parametrize("rows, error, match", [
    ("empty", ValueError, "at least one row"),
    ("empty-row", ValueError, "at least one Value"),
    ("ragged", ValueError, "row 1 has 1 Values, but row 0 has 2"),
    ("number", TypeError, "must be Values, not 'float'"),
    ("mixed", TypeError, "cannot combine"),
])
def test_matrix_refuses_bad_rows(V, rows, error, match):
    module = F._engine_of([V(0.0)])
    other = module.GptValue if V is module.Value else module.Value
    rows = {"empty": [], "empty-row": [[]], "ragged": [[V(1.0), V(2.0)], [V(3.0)]],
            "number": [[V(1.0), 2.0]], "mixed": [[V(1.0)], [other(2.0)]]}[rows]
    for make in (F.matrix, module.Matrix):
        if not rows and make is F.matrix:
            continue                    # (no Value to find the engine by: the chosen one's)
        with pytest.raises(error, match=match):
            make(rows)


def test_linear_keeps_the_sign_of_zero_as_sum_does(V):
    w = [[V(-0.0)], [V(-1.0)]]
    out = F.linear([V(1.0)], w)
    assert [bits(v.data) for v in out] == [bits(v.data) for v in linear([V(1.0)], w)]


def test_attention_through_linear(V):
    rnd = random.Random(9)
    hd, t = 4, 5
    q = [V(rnd.gauss(0, 1)) for _ in range(hd)]
    keys = [[V(rnd.gauss(0, 1)) for _ in range(hd)] for _ in range(t)]
    vals = [[V(rnd.gauss(0, 1)) for _ in range(hd)] for _ in range(t)]
    leaves = q + sum(keys, []) + sum(vals, [])

    def fused():
        weights = F.softmax([s / hd ** 0.5 for s in F.linear(q, keys)])
        return F.linear(weights, [[v[j] for v in vals] for j in range(hd)])

    def plain():
        scores = [sum(q[j] * k[j] for j in range(hd)) / hd ** 0.5 for k in keys]
        weights = softmax(scores)
        return [sum(weights[s] * vals[s][j] for s in range(t)) for j in range(hd)]
    same_values_and_grads(fused, plain, leaves, V, rel=1e-11)


def attention_by_heads(q, keys, values, n_head):
    # what F.attention stands for, through the other helpers
    hd = len(q) // n_head
    out = []
    for lo in range(0, len(q), hd):
        weights = F.softmax(F.mul(F.linear(q[lo:lo + hd], [k[lo:lo + hd] for k in keys]),
                                  (hd ** 0.5) ** -1))
        out += F.linear(weights, [[v[lo + j] for v in values] for j in range(hd)])
    return out


def attention_as_microgpt(q, keys, values, n_head):
    # microgpt's own expressions, over Values
    hd = len(q) // n_head
    out = []
    for lo in range(0, len(q), hd):
        q_h = q[lo:lo + hd]
        k_h = [k[lo:lo + hd] for k in keys]
        v_h = [v[lo:lo + hd] for v in values]
        logits = [sum(q_h[j] * k_h[t][j] for j in range(hd)) / hd ** 0.5
                  for t in range(len(k_h))]
        weights = softmax(logits)
        out += [sum(weights[t] * v_h[t][j] for t in range(len(v_h))) for j in range(hd)]
    return out


@pytest.mark.parametrize("shape", [(16, 4, 1), (16, 4, 5), (8, 2, 3), (6, 1, 2), (4, 4, 7)],
                         ids=lambda s: "E{}-H{}-T{}".format(*s))
def test_attention_is_the_layers_it_stands_for(V, shape):
    # the per-head helpers' graph, node for node but that the scaling is in the logits'
    # rows (no leaf of the scale and no '*' node per logit): values and grads bit for
    # bit; and microgpt's expressions: values bit for bit, grads to rounding
    e, n_head, t = shape
    rnd = random.Random(e * 100 + t)
    q = [V(rnd.gauss(0, 1)) for _ in range(e)]
    keys = [[V(rnd.gauss(0, 1)) for _ in range(e)] for _ in range(t)]
    values = [[V(rnd.gauss(0, 1)) for _ in range(e)] for _ in range(t)]
    leaves = q + sum(keys, []) + sum(values, [])
    before = arena_live(V)
    fused = F.attention(q, keys, values, n_head)
    if before is not None:        # per head: t logits, t + 1 of softmax, hd outputs
        assert arena_live(V) - before == n_head * (2 * t + 1) + e
    assert all(type(v) is V for v in fused) and len(fused) == e
    fused_grads = grads_of(fused, leaves, V)
    del fused
    by_heads = attention_by_heads(q, keys, values, n_head)
    by_heads_grads = grads_of(by_heads, leaves, V)
    assert [bits(v.data) for v in F.attention(q, keys, values, n_head)] == \
        [bits(v.data) for v in by_heads]
    assert [bits(g) for g in fused_grads] == [bits(g) for g in by_heads_grads]
    same_values_and_grads(lambda: F.attention(q, tuple(keys), values, n_head),
                          lambda: attention_as_microgpt(q, keys, values, n_head), leaves, V,
                          rel=1e-11)
    # an output is a row of the head's weights and the values' dimension
    kids = (lambda v: v._prev) if hasattr(V, "_prev") else (lambda v: set(v._children))
    out = F.attention(q, keys, values, n_head)
    assert {c.data for c in kids(out[0])} >= {v[0].data for v in values}
    # both engines make the same graph: per head t logits, t + 1 nodes of softmax and hd
    # outputs over the leaves
    seen, stack = set(), list(out)
    while stack:
        v = stack.pop()
        if v not in seen:
            seen.add(v)
            stack += kids(v)
    assert len(seen) == len(leaves) + n_head * (2 * t + 1) + e
    if hasattr(V, "_local_grads"):
        # a logit is its row's sum times c = (hd ** 0.5) ** -1: its local derivatives
        # (k_0, q_0, k_1, q_1, ...: by k the q's, by q the k's) are the sum's times c
        hd, c = e // n_head, ((e // n_head) ** 0.5) ** -1
        weight = next(w for w in out[0]._children if w not in sum(values, []))
        logit = next(k for k in weight._children if len(k._children) == 2 * hd)
        ks, qs = logit._children[0::2], logit._children[1::2]
        assert qs == tuple(q[:hd])
        expect = sum(((qj.data * c, kj.data * c) for kj, qj in zip(ks, qs)), ())
        assert logit._local_grads == expect


@pytest.mark.parametrize("seed", range(4))
def test_add_mul_relu_make_the_expressions_graph(V, seed):
    # the operators' own nodes, one per element (a number of y a leaf, as the operator
    # makes it): the same values, ops, children and grads, bit for bit
    rnd = random.Random(seed)
    data = [rnd.uniform(-2, 2) for _ in range(10)]
    numbers = [rnd.choice([0.5, -3, 2.25, 0]) for _ in range(3)]

    def run(fused):
        x = [V(d) for d in data[:5]]
        y = [V(d) for d in data[5:7]] + numbers
        if fused:
            outs = F.add(x, y) + F.mul(x, y) + F.mul(x, 0.75) + F.add(x, -1) + F.relu(x)
        else:
            outs = ([a + b for a, b in zip(x, y)] + [a * b for a, b in zip(x, y)] +
                    [a * 0.75 for a in x] + [a + -1 for a in x] + [a.relu() for a in x])
        return outs, grads_of(outs, x + y[:2], V)

    (fused, fused_grads), (plain, plain_grads) = run(True), run(False)
    assert [bits(v.data) for v in fused] == [bits(v.data) for v in plain]
    assert [bits(g) for g in fused_grads] == [bits(g) for g in plain_grads]
    assert all(type(v) is V for v in fused)
    kids = (lambda v: v._prev) if hasattr(V, "_prev") else (lambda v: v._children)
    for a, b in zip(fused, plain):
        assert getattr(a, "_op", None) == getattr(b, "_op", None)
        assert sorted(c.data for c in kids(a)) == sorted(c.data for c in kids(b))
    assert F.add([], []) == F.mul([], 2.0) == F.relu([]) == []


def test_add_mul_relu_nodes_are_replayed(V):
    # their nodes are the operators' own, so recompute() re-evaluates them
    x, y = [V(0.5), V(-2.0)], [V(1.5), 3.0]
    out = sum(F.relu(F.add(F.mul(x, y), 0.25)), V(0.0))
    assert out.data == 1.0
    x[0].data = 2.0
    out.recompute()
    assert out.data == 3.25
    out.backward()
    assert (x[0].grad, x[1].grad) == (1.5, 0.0)


@pytest.mark.parametrize("seed", range(4))
def test_rmsnorm_equals_the_expression(V, seed):
    rnd = random.Random(seed)
    x = [V(rnd.gauss(0, 2)) for _ in range(rnd.randint(1, 24))]
    same_values_and_grads(lambda: F.rmsnorm(x), lambda: rmsnorm(x), x, V)
    same_values_and_grads(lambda: F.rmsnorm(x, eps=0.25), lambda: rmsnorm(x, 0.25), x, V)


@pytest.mark.parametrize("seed", range(4))
def test_softmax_and_cross_entropy_equal_the_expressions(V, seed):
    rnd = random.Random(seed)
    x = [V(rnd.gauss(0, 3)) for _ in range(rnd.randint(1, 30))]
    same_values_and_grads(lambda: F.softmax(x), lambda: softmax(x), x, V)
    t = rnd.randrange(len(x))
    same_values_and_grads(lambda: [F.cross_entropy(x, t)], lambda: [cross_entropy(x, t)], x, V)
    same_values_and_grads(lambda: [F.cross_entropy(x, -1)],
                          lambda: [cross_entropy(x, len(x) - 1)], x, V)


def test_gradcheck_of_every_layer(V):
    from fastgrad import gradcheck
    if V.__name__ == "GptValue":
        pytest.skip("gradcheck makes fastgrad.engine Values")
    xs = [0.3, -1.2, 0.8, 2.0]
    assert gradcheck(lambda *v: sum(F.rmsnorm(list(v))[k] * (k + 1) for k in range(4)), xs)
    assert gradcheck(lambda *v: F.softmax(list(v))[1] * 3 + F.softmax(list(v))[2], xs)
    assert gradcheck(lambda *v: F.cross_entropy(list(v), 2), xs)
    assert gradcheck(lambda *v: F.linear(list(v[:2]), [list(v[2:])])[0], xs)
    assert gradcheck(lambda *v: sum(F.linear(list(v[:2]), [list(v[2:]), list(v[:2])],
                                             relu=True)), xs)
    assert gradcheck(lambda *v: sum(F.linear(list(v[:2]), [list(v[2:]), list(v[:2])],
                                             [v[1] * v[3], v[0]])), xs)


def test_one_node_per_output_where_it_makes_backward_cheap(V):
    x = [V(0.1 * k) for k in range(6)]
    w = [[V(0.2 * k) for k in range(6)] for _ in range(3)]
    kids = (lambda v: v._prev) if hasattr(V, "_prev") else (lambda v: set(v._children))
    out = F.linear(x, w)
    assert all(kids(o) == set(x) | set(row) for o, row in zip(out, w))
    loss = F.cross_entropy(x, 2)
    assert kids(loss) == set(x)
    probs = F.softmax(x)
    total = (kids(probs[0]) - {x[0]}).pop()    # each probability: its logit and the sum
    assert all(kids(p) == {xi, total} for p, xi in zip(probs, x)) and kids(total) == set(x)


def test_no_grad_gives_leaves(V):
    x = [V(0.5), V(-0.25), V(2.0)]
    w = [[V(1.0), V(2.0), V(3.0)]]
    keys, values = [x[1:] + x[:1], w[0]], [w[0], x]
    with no_grad():
        outs = (F.linear(x, w) + F.linear(x, [w[0], x], relu=True) +
                F.linear(x, F.matrix([x, w[0]]), relu=True) + F.linear(x, w, x[:1]) +
                F.linear(x, F.matrix([x, w[0]]), x[1:], relu=True) +
                F.rmsnorm(x) + F.softmax(x) + [F.cross_entropy(x, 0)] +
                F.add(x, w[0]) + F.mul(x, 3) + F.relu(x) +
                F.attention(x[:2], [k[:2] for k in keys], [v[:2] for v in values], 2))
    plain = (linear(x, w) + [s.relu() for s in linear(x, [w[0], x]) + linear(x, [x, w[0]])] +
             [s + b for s, b in zip(linear(x, w), x[:1])] +
             [(s + b).relu() for s, b in zip(linear(x, [x, w[0]]), x[1:])] +
             rmsnorm(x) + softmax(x) + [cross_entropy(x, 0)] +
             [a + b for a, b in zip(x, w[0])] + [a * 3 for a in x] + [a.relu() for a in x] +
             attention_as_microgpt(x[:2], [k[:2] for k in keys], [v[:2] for v in values], 2))
    assert [o.data for o in outs] == [p.data for p in plain]
    kids = (lambda v: v._prev) if hasattr(V, "_prev") else (lambda v: v._children)
    assert all(not kids(o) for o in outs)


def test_large_logits_stay_finite(V):
    x = [V(1000.0), V(-1000.0), V(999.0)]
    loss = F.cross_entropy(x, 1)
    loss.backward()
    assert math.isfinite(loss.data) and all(math.isfinite(v.grad) for v in x)
    assert all(math.isfinite(p.data) for p in F.softmax(x))


def test_recompute_refuses_fused_nodes(V):
    x = [V(0.5), V(1.5)]
    loss = F.cross_entropy(F.linear(x, [[V(1.0), V(2.0)], [V(0.5), V(0.1)]]), 0)
    with pytest.raises(TypeError, match="rebuild the graph"):
        loss.recompute()


def arena_live(V):
    """The compiled arena's live nodes, for V of the compiled engine (None otherwise: the
    reference has no arena). Garbage of earlier tests is collected first, so that the
    collector cannot free it in the middle of the count."""
    if V.__module__ != "fastgrad._core":
        return None
    gc.collect()
    from fastgrad import _core
    return _core._tape_stats()["live"]


def other(V):
    # the other Value class of V's engine
    if V.__module__ == "fastgrad.reference":
        module = reference
    else:
        from fastgrad import _core as module
    return module.GptValue if V is module.Value else module.Value


def test_numpy_integers_index_and_count_as_ints(V):
    # a class index or a head count taken from numpy (labels in an array) is an int, as
    # it is to list indexing (probs[np.int64(1)]): the same node as with the int
    x = [V(0.5), V(-1.0), V(2.0), V(0.25)]
    for target in (np.int64(1), np.int32(-3), np.uint8(1)):
        same_values_and_grads(lambda: [F.cross_entropy(x, target)],
                              lambda: [F.cross_entropy(x, 1)], x, V)
    keys = [[V(0.1 * k + j) for j in range(4)] for k in range(3)]
    values = [[V(0.2 * k - j) for j in range(4)] for k in range(3)]
    same_values_and_grads(lambda: F.attention(x, keys, values, np.int64(2)),
                          lambda: F.attention(x, keys, values, 2),
                          x + sum(keys, []) + sum(values, []), V)


@pytest.mark.parametrize("call, error", [
    (lambda V, x, w: F.linear(x, [w[0], w[1][:2]]), ValueError),      # ragged rows
    (lambda V, x, w: F.linear(x[:2], w), ValueError),                  # len(x) != len(row)
    (lambda V, x, w: F.linear([], [[]]), ValueError),                  # empty x
    (lambda V, x, w: F.linear(x, [[1.0, 2.0, 3.0]]), TypeError),       # weights not Values
    (lambda V, x, w: F.linear(["a", x[1], x[2]], w), TypeError),
    (lambda V, x, w: F.linear(x, [w[0], [w[1][0], "b", w[1][2]]]), TypeError),   # in row 2
    (lambda V, x, w: F.linear(x[:2], F.matrix(w)), ValueError),
    (lambda V, x, w: F.linear(x[:2] + ["c"], F.matrix(w)), TypeError),
    (lambda V, x, w: F.linear(x, w, relu=1), TypeError),               # relu not a bool
    (lambda V, x, w: F.linear(x, F.matrix(w), relu=None), TypeError),
    (lambda V, x, w: F.linear(x[:2], w, relu=True), ValueError),
    (lambda V, x, w: F.linear(x, w, x), ValueError),                   # 3 biases, 2 rows
    (lambda V, x, w: F.linear(x, F.matrix(w), x[:1]), ValueError),
    (lambda V, x, w: F.linear(x, w, [1.0, 2.0]), TypeError),           # numbers
    (lambda V, x, w: F.linear(x, F.matrix(w), [x[0], "b"]), TypeError),
    (lambda V, x, w: F.linear(x, w, [x[0], other(V)(1.0)]), TypeError),
    (lambda V, x, w: F.linear(x, w, 3), TypeError),                    # not a sequence
    (lambda V, x, w: F.rmsnorm([]), ValueError),
    (lambda V, x, w: F.rmsnorm(x + [1.0]), TypeError),
    (lambda V, x, w: F.rmsnorm(x, eps="big"), TypeError),
    (lambda V, x, w: F.rmsnorm([V(0.0)], eps=0.0), ZeroDivisionError),  # 0 ** -0.5, as Value
    (lambda V, x, w: F.softmax([]), ValueError),
    (lambda V, x, w: F.softmax([x[0], 2.0]), TypeError),
    (lambda V, x, w: F.cross_entropy(x, 3), IndexError),
    (lambda V, x, w: F.cross_entropy(x, 1.0), TypeError),
    (lambda V, x, w: F.cross_entropy(x, np.float64(1.0)), TypeError),
    (lambda V, x, w: F.cross_entropy(x, np.True_), TypeError),
    (lambda V, x, w: F.cross_entropy(x, np.int64(-4)), IndexError),
    (lambda V, x, w: F.add(x, w[0][:2]), ValueError),
    (lambda V, x, w: F.mul(x, x + [1.0]), ValueError),
    (lambda V, x, w: F.add(x[:2] + [1.0], w[0]), TypeError),          # a number in x
    (lambda V, x, w: F.mul(x, [w[0][0], "b", w[0][2]]), TypeError),    # late in y
    (lambda V, x, w: F.add(x, "b"), TypeError),
    (lambda V, x, w: F.mul(x, [other(V)(1.0)] * 3), TypeError),       # the other class
    (lambda V, x, w: F.relu(x + ["c"]), TypeError),
    (lambda V, x, w: F.add(x, [1 << 1100] * 3), OverflowError),       # as the operator
    (lambda V, x, w: F.attention(x[:2], [x[1:]], [w[0][1:]], 2.0), TypeError),   # n_head
    (lambda V, x, w: F.attention(x[:2], [x[1:]], [w[0][1:]], True), TypeError),
    (lambda V, x, w: F.attention(x[:2], [x[1:]], [w[0][1:]], np.float64(2.0)), TypeError),
    (lambda V, x, w: F.attention(x[:2], [x[1:]], [w[0][1:]], np.int64(0)), ValueError),
    (lambda V, x, w: F.attention(x[:2], [x[1:]], [w[0][1:]], 0), ValueError),
    (lambda V, x, w: F.attention(x, w, w, 2), ValueError),             # 3 into 2 heads
    (lambda V, x, w: F.attention([], [], [], 1), ValueError),
    (lambda V, x, w: F.attention(x, [], [], 1), ValueError),            # no keys
    (lambda V, x, w: F.attention(x, w, w[:1], 1), ValueError),          # 2 keys, 1 value
    (lambda V, x, w: F.attention(x, [w[0], w[1][:2]], w, 3), ValueError),   # a short key
    (lambda V, x, w: F.attention(x, w, [w[0], w[1][:2]], 3), ValueError),   # a short value
    (lambda V, x, w: F.attention(x, w, [w[0], [w[1][0], "b", w[1][2]]], 1), TypeError),
    (lambda V, x, w: F.attention(x, [[other(V)(1.0)] * 3] * 2, w, 1), TypeError),
    (lambda V, x, w: F.attention([1.0, 2.0, 3.0], w, w, 1), TypeError),  # numbers in q
], ids=["ragged", "mismatch", "empty-x", "number-weights", "str-x", "late-weight",
        "matrix-mismatch", "matrix-str-x", "relu-flag-int", "matrix-relu-flag-none",
        "relu-mismatch", "bias-count", "matrix-bias-count", "bias-numbers", "matrix-bias-str",
        "bias-other-class", "bias-int", "rms-empty",
        "rms-number", "rms-eps", "rms-zero", "softmax-empty", "softmax-number", "ce-range",
        "ce-float", "ce-numpy-float", "ce-numpy-bool", "ce-numpy-range", "add-mismatch",
        "mul-mismatch", "add-number-x", "mul-str-y", "add-str", "mul-other-class", "relu-str",
        "add-huge-int", "attn-float-heads", "attn-bool-heads", "attn-numpy-float-heads",
        "attn-numpy-no-heads", "attn-no-heads", "attn-split", "attn-empty-q", "attn-no-keys",
        "attn-count", "attn-short-key", "attn-short-value", "attn-str-value", "attn-other-class",
        "attn-number-q"])
def test_bad_input_changes_nothing(V, call, error):
    x = [V(0.5), V(-1.0), V(2.0)]
    w = [[V(0.1), V(0.2), V(0.3)], [V(0.4), V(0.5), V(0.6)]]
    y = F.linear(x, w)[0] * x[0]
    before = arena_live(V)
    with pytest.raises(error):
        call(V, x, w)
    assert arena_live(V) == before
    y.backward()                        # the existing graph is intact
    assert x[0].grad == pytest.approx(0.1 * 0.5 + (0.1 * 0.5 + 0.2 * -1.0 + 0.3 * 2.0))


@compiled
def test_the_helpers_are_the_compiled_entry_points():
    # on the compiled engine functional's dispatch is done in C: its four names are the
    # engine's entry points, named and documented as the Python functions they stand for,
    # which still take what the entry points do not (the reference's Values, bad input)
    import inspect
    from fastgrad import _core
    for name in ("linear", "rmsnorm", "softmax", "cross_entropy", "add", "mul", "relu",
                 "attention"):
        f = getattr(F, name)
        assert f is getattr(_core, "_fast_" + name)
        assert (f.__name__, f.__module__) == (name, "fastgrad.functional")
        assert f.__doc__ and f.__annotations__
    assert list(inspect.signature(F.rmsnorm).parameters) == ["x", "eps"]
    relu = inspect.signature(F.linear).parameters["relu"]
    assert (relu.kind, relu.default) == (inspect.Parameter.KEYWORD_ONLY, False)
    assert list(inspect.signature(F.linear).parameters) == ["x", "w", "bias", "relu"]
    assert inspect.signature(F.rmsnorm).parameters["eps"].default == 1e-5
    for V in (reference.Value, reference.GptValue):
        x = [V(0.5), V(-1.5)]
        outs = (F.linear(x, [[V(2.0), V(3.0)]]), F.linear(x, [x], relu=True),
                F.linear(x, [x], x[:1]), F.rmsnorm(x),
                F.softmax(x),
                [F.cross_entropy(x, -1)], F.add(x, x), F.mul(x, [1, 2.0]), F.relu(x),
                F.attention(x, [x], [x], 2))
        assert all(type(v) is V for out in outs for v in out)
    for V in (_core.Value, _core.GptValue):
        x = [V(0.5), V(-1.5)]
        w = [[V(2.0), V(3.0)]]
        assert F.linear(x, w)[0].data == _core._linear(x, w)[0].data == -3.5
        assert F.linear(x, F.matrix(w))[0].data == -3.5
        assert F.linear(x, w, relu=True)[0].data == _core._linear(x, w, None, True)[0].data == 0.0
        assert F.linear(x, w, x[:1])[0].data == _core._linear(x, w, x[:1])[0].data == -3.0
        assert F.cross_entropy(x, -2).data == _core._cross_entropy(x, 0).data
        with pytest.raises(TypeError, match="target must be an int"):
            F.cross_entropy(x, True)
        with pytest.raises(IndexError, match="out of range"):
            F.cross_entropy(x, 2)
        with pytest.raises(ValueError, match="row 0 of w has 2 weights, but x has 1"):
            F.linear(x[:1], w)


@compiled
def test_linear_over_nodes_with_a_python_backward():
    # linear adds x's references once per call and reads its children's flags as it sums
    # the rows: a child with a Python _backward (in x, and twice among the weights) is
    # still held while the layer names it, its rule runs, and its cycle (the closure
    # names its own node) is collected with the graph
    import weakref
    from fastgrad import _core
    C = _core.Value
    a, b = C(0.5), C(-1.5)

    def square(v):
        out = C(v.data ** 2, (v,), 'sq')

        def _backward():
            v.grad += 2 * v.data * out.grad
        out._backward = _backward
        return out, weakref.ref(_backward)

    sa, rule_a = square(a)
    sb, rule_b = square(b)
    x = [sa, C(2.0), 3.0]
    w = [[C(1.0), sb, C(0.25)], [sb, C(-2.0), C(0.5)]]
    out = F.linear(x, w)
    del sa, sb
    gc.collect()
    assert rule_a() is not None and rule_b() is not None       # held by the layer
    loss = out[0] + out[1] * 3.0
    loss.backward()
    # loss = a^2 + 2 b^2 + 0.75 + 3 (a^2 b^2 - 4 + 1.5)
    assert loss.data == pytest.approx(0.25 + 2 * 2.25 + 0.75 + 3 * (0.25 * 2.25 - 2.5))
    assert a.grad == pytest.approx(2 * 0.5 * (1 + 3 * 2.25))
    assert b.grad == pytest.approx(2 * -1.5 * (2 + 3 * 0.25))
    assert not _core._test_descends(loss)         # (a Python rule under it)
    del out, loss, x, w
    gc.collect()
    assert rule_a() is None and rule_b() is None


@compiled
def test_linear_rows_share_one_allocation_freed_with_the_last_row():
    # the rows' blocks are one chunk: a row outlives its siblings with its block intact,
    # and the chunk goes with the last row (tracemalloc sees the engine's PyMem blocks)
    import tracemalloc
    from fastgrad import _core
    C = _core.Value
    x = [C(0.01 * k) for k in range(200)]
    w = [[C(0.001 * (j + k)) for j in range(200)] for k in range(50)]
    del F.linear(x, w)[:]                 # (the arena grows to its size first)
    gc.collect()
    blocks = 50 * 200 * (2 * 4 + 8)       # each row's children and its derivatives by x
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = F.linear(x, w)
        made = tracemalloc.get_traced_memory()[0] - base
        keep = out[17]
        del out
        gc.collect()
        keep.backward()
        assert [v.grad for v in w[17]] == [xi.data for xi in x]
        assert [xi.grad for xi in x] == [v.data for v in w[17]]
        del keep
        gc.collect()
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert made >= blocks and left < blocks / 20


@compiled
def test_linear_rows_hold_x_until_the_last_of_them_dies():
    # x's nodes, held by nothing but the rows, live while any row does (the rows' chunk
    # holds them for all of its rows) and die with the last row
    from fastgrad import _core
    C = _core.Value
    a = C(1.5)
    x = [a * float(k + 1) for k in range(4)]         # 4 '*' nodes and 4 constant leaves
    w = [[C(0.5 * (r + k)) for k in range(4)] for r in range(3)]
    out = F.linear(x, w)
    del x
    base = arena_live(C)
    del out[:2]
    assert arena_live(C) == base - 2                 # two rows: x stays
    last = out.pop()
    (last * 2.0).backward()
    assert a.grad == pytest.approx(2 * sum(w[2][k].data * (k + 1) for k in range(4)))
    assert arena_live(C) == base - 2
    del last
    assert arena_live(C) == base - 2 - 1 - 8         # the last row, then x and its leaves


@compiled
def test_the_rows_of_a_matrix_hold_it_and_its_values():
    # a row made from a Matrix counts no reference to its weights: the rows' chunk holds
    # the Matrix, which holds them; so the weights live, with only the rows naming them,
    # until the last row dies, and then go with the Matrix
    from fastgrad import _core
    C = _core.Value
    x = [C(0.5 * k) * 2.0 for k in range(3)]
    base = arena_live(C)
    W = F.matrix([[C(0.1 * (r + k)) for k in range(3)] for r in range(4)])
    assert arena_live(C) == base + 12
    out = F.linear(x, W)
    del W
    assert arena_live(C) == base + 12 + 4
    del out[:3]
    assert arena_live(C) == base + 12 + 1
    (out[0] * 2.0).backward()
    assert [xi.grad for xi in x] == [2 * 0.1 * (3 + k) for k in range(3)]
    del out
    assert arena_live(C) == base
    _core._test_free_slots()


@compiled
def test_a_deep_chain_of_matrices_is_freed():
    # each Matrix holds the rows of the call before, whose chunk holds the Matrix before
    # that: dropping the last row frees the whole chain, nested as deep as it is built
    from fastgrad import _core
    C = _core.Value
    gc.collect()
    base = _core._tape_stats()["live"]
    out = F.linear([C(1.0)], F.matrix([[C(0.5)]]))
    for _ in range(200_000):
        out = F.linear([1.0], F.matrix([out]))
    out[0].backward()
    assert out[0].data == 0.5
    del out
    assert _core._tape_stats()["live"] == base


@compiled
def test_linear_over_a_matrix_takes_the_one_pass_backward():
    # leaf weights are not marked by the pass (LEAF_WEIGHTS): the grads are still all
    # there, and the graph over nodes in x descends
    from fastgrad import _core
    C = _core.Value
    x = [C(0.3 * k - 0.4).tanh() for k in range(5)]
    w = [[C(0.01 * (r * 5 + k)) for k in range(5)] for r in range(3)]
    loss = F.cross_entropy(F.linear(x, F.matrix(w)), 1)
    assert _core._test_descends(loss)
    loss.backward()
    plain = reference.Value
    rx = [plain(0.3 * k - 0.4).tanh() for k in range(5)]
    rw = [[plain(v.data) for v in row] for row in w]
    rloss = F.cross_entropy(F.linear(rx, rw), 1)
    rloss.backward()
    assert [v.grad for v in sum(w, [])] == pytest.approx([v.grad for v in sum(rw, [])], rel=1e-12)
    assert _core._test_scratch_clear()


@pytest.mark.parametrize("pack", [F.matrix, list], ids=["matrix", "rows"])
def test_each_backward_reaches_x_through_any_row(V, pack):
    # a pass marks a call's x once, at the first of its rows it sweeps: a later backward
    # from another row of the same call (a new root, so a new pass) reaches x again
    base = [V(0.2 * k - 0.3) for k in range(4)]
    x = [b.exp() for b in base]
    w = [[V(0.1 * (r - k)) for k in range(4)] for r in range(3)]
    out = F.linear(x, pack(w))
    for r, scale in ((0, 2.0), (2, -3.0), (1, 0.5)):
        for b in base:
            b.grad = 0.0
        for xi in x:
            xi.grad = 0.0
        (out[r] * scale).backward()
        assert [b.grad for b in base] == pytest.approx(
            [scale * w[r][k].data * math.exp(base[k].data) for k in range(4)], rel=1e-12)


def test_a_leaf_given_a_backward_after_a_backward_has_it_called(V):
    # micrograd's backward() calls every node's _backward, a leaf's too: one given after
    # a first backward() (whose order of the graph is cached, and may leave out the leaf
    # weights of a Matrix's rows, which have no rule) is called by the next one, as it is
    # over plain rows
    if V.__name__ == "GptValue":
        pytest.skip("microgpt's Value has no _backward")
    got = []
    for pack in (F.matrix, list):
        x = [V(0.5) * 1.0, V(-1.0) * 1.0]
        w = [[V(0.25), V(2.0)], [V(1.5), V(-0.5)]]
        loss = sum(F.linear(x, pack(w)), V(0.0))
        loss.backward()
        calls = []
        w[1][0]._backward = lambda: calls.append(1)
        loss.backward()
        got.append((calls, [v.grad for v in sum(w, [])]))
    assert got[0] == got[1] and got[0][0] == [1]


@compiled
@pytest.mark.parametrize("layer", ["linear", "linear-matrix", "linear-relu", "linear-matrix-bias",
                                   "rmsnorm", "softmax", "cross_entropy", "add", "mul", "relu",
                                   "attention"])
def test_a_finalizer_that_changes_the_lists_mid_call_leaves_the_arena_sound(layer):
    # before CPython 3.12 a collection can run inside a helper (making its handles
    # allocates), and a finalizer may then empty the lists it was given of their Values:
    # the helper reads its own copy of x (linear: its weights after the handles are made),
    # so whatever the collection does, the call gives a layer over live Values or an
    # error, and no node is lost. From 3.12 a collection runs only between bytecodes,
    # never inside a C call: here it comes before the call (which then finds the lists
    # spoilt) or after it; Python code run inside a call is the next test's.
    from fastgrad import _core
    C = _core.Value
    make = {
        "linear": lambda x, w: F.linear(x, w),
        "linear-matrix": lambda x, w: F.linear(x, F.matrix(w)),
        "linear-relu": lambda x, w: F.linear(x, w, relu=True),
        "linear-matrix-bias": lambda x, w: F.linear(x, F.matrix(w), x[:3]),
        "rmsnorm": lambda x, w: F.rmsnorm(x),
        "softmax": lambda x, w: F.softmax(x),
        "cross_entropy": lambda x, w: [F.cross_entropy(x, 1)],
        "add": lambda x, w: F.add(x, w[0]),
        "mul": lambda x, w: F.mul(x, w[1]),
        "relu": lambda x, w: F.relu(x),
        "attention": lambda x, w: F.attention(x, w, w[::-1], 2),
    }[layer]

    class Meddler:
        # cyclic garbage whose finalizer makes another one until the k-th collection,
        # which spoils the lists
        def __init__(self, state):
            self.state, self.me = state, self

        def __del__(self):
            if self.state["left"] == 0:
                for lst in self.state["lists"]:
                    lst[:] = ["spoilt"] * len(lst)
            if self.state["left"] > 0:
                Meddler(self.state)
            self.state["left"] -= 1

    gc.collect()
    base = _core._tape_stats()["live"]
    thresholds = gc.get_threshold()
    spoilt = []                               # whether the k-th run's lists were spoilt in the call
    try:
        for k in range(12):
            x = [C(0.1 * j - 0.2) for j in range(4)]
            w = [[C(0.05 * (i + j)) for j in range(4)] for i in range(3)]
            state = {"left": k, "lists": [x] + w}
            Meddler(state)
            gc.set_threshold(1)
            try:
                out = make(x, w)
            except (TypeError, ValueError):
                out = None
            finally:
                gc.set_threshold(*thresholds)
            spoilt.append(x[0] == "spoilt")
            state["left"], state["lists"] = -1, []
            if out is not None:
                sum(out, C(0.0)).backward()
                assert all(math.isfinite(v.data) and math.isfinite(v.grad) for v in out)
            del out, x, w, state
            gc.collect()
            assert _core._tape_stats()["live"] == base
            _core._test_free_slots()
    finally:
        gc.set_threshold(*thresholds)
    if sys.version_info < (3, 12):
        assert any(spoilt)                    # (a collection did run inside a call)


@pytest.mark.parametrize("form", ["rows", "relu", "matrix", "bias"])
def test_a_number_of_x_that_runs_code_mid_call_leaves_the_arena_sound(V, form):
    # linear reads a number of x with its __float__: Python code run inside the call, on
    # every CPython. This one spoils the caller's lists, collects, and builds and drops
    # more nodes than the arena has room for, so that it grows (its arrays move). Both
    # engines read x first, from their copy, and list rows afterwards from the caller's
    # lists, which are then spoilt (a TypeError); a Matrix's rows, and rows given a bias
    # (new lists), were copied before, and give the layer over the Values passed. No
    # node of the call's is left behind either way.
    arena = None                                  # (the reference's Values have none)
    if V.__module__ == "fastgrad._core":
        from fastgrad import _core as arena

    reads = []

    class Meddler:
        def __float__(self):
            reads.append(self)
            for lst in [x] + w:
                lst[:] = ["spoilt"] * len(lst)
            gc.collect()
            stats = arena._tape_stats() if arena else {"capacity": 0, "live": 0}
            room = stats["capacity"] - stats["live"]
            grows = room < 1 << 20                # (an arena already that big is not grown)
            chain = V(0.5)
            for _ in range(room // 2 + 1 if grows else 1000):
                chain = chain * 1.0               # (two nodes: the 1.0's leaf and the product)
            if arena and grows:
                assert arena._tape_stats()["capacity"] > stats["capacity"]
            return 0.25

    def expressions(x, w, bias):
        # what the layer stands for, over fresh Values of the same data
        rows = linear(x, w)
        rows = rows if bias is None else [s + b for s, b in zip(rows, bias)]
        return [s.relu() for s in rows] if form == "relu" else rows

    gc.collect()
    base = arena._tape_stats()["live"] if arena else 0
    data = ([0.5, None, -1.5], [[0.25, -2.0, 1.5], [3.0, 0.75, -0.5]], [0.125, -4.0])
    x = [V(d) if d is not None else Meddler() for d in data[0]]
    w = [[V(d) for d in row] for row in data[1]]
    bias = [V(d) for d in data[2]] if form == "bias" else None
    given_x, given_w = list(x), [list(row) for row in w]
    if form == "rows" or form == "relu":
        with pytest.raises(TypeError, match="linear's weights must be Values, not 'str'"):
            F.linear(x, w, relu=form == "relu")
    else:
        out = F.linear(x, F.matrix(w) if form == "matrix" else w, bias)
        sum(out, V(0.0)).backward()
        fresh_x = [V(d) if d is not None else 0.25 for d in data[0]]
        fresh_w = [[V(d) for d in row] for row in data[1]]
        fresh_b = [V(d) for d in data[2]] if bias else None
        want = expressions(fresh_x, fresh_w, fresh_b)
        sum(want, V(0.0)).backward()
        assert [bits(v.data) for v in out] == [bits(v.data) for v in want]
        given = [v for v in given_x if isinstance(v, V)] + sum(given_w, []) + (bias or [])
        fresh = [v for v in fresh_x if isinstance(v, V)] + sum(fresh_w, []) + (fresh_b or [])
        assert [v.grad for v in given] == pytest.approx([v.grad for v in fresh], rel=1e-12)
        del out, want, given, fresh, fresh_x, fresh_w, fresh_b
    assert len(reads) == 1                      # (each number is read once, by both engines)
    del x, w, bias, given_x, given_w, reads
    gc.collect()
    if arena:
        assert arena._tape_stats()["live"] == base
        arena._test_free_slots()


def test_an_eps_that_runs_code_mid_call_gives_the_layer_over_the_values_given(V):
    # rmsnorm reads eps with its __float__ after it has copied x: an eps that spoils x,
    # collects and builds a graph gets the layer over the Values passed, on both engines
    class Eps:
        def __float__(self):
            x[:] = ["spoilt"] * len(x)
            gc.collect()
            chain = V(0.5)
            for _ in range(1000):
                chain = chain * 1.0
            return 1e-5

    data = [0.5, -1.25, 2.0]
    x = [V(d) for d in data]
    given = list(x)
    out = F.rmsnorm(x, Eps())
    sum(out, V(0.0)).backward()
    fresh = [V(d) for d in data]
    want = rmsnorm(fresh)
    sum(want, V(0.0)).backward()
    assert x == ["spoilt"] * 3
    assert [bits(v.data) for v in out] == [bits(v.data) for v in want]
    assert [v.grad for v in given] == pytest.approx([v.grad for v in fresh], rel=1e-12)


@compiled
@pytest.mark.parametrize("layer", ["linear", "linear-numbers", "linear-matrix", "matrix",
                                   "linear-relu", "linear-matrix-relu", "linear-bias",
                                   "linear-matrix-bias", "rmsnorm", "softmax",
                                   "cross_entropy", "attention", "gpt-value"])
def test_failed_allocation_leaves_no_half_built_layer(layer):
    from fastgrad import _core
    V = _core.Value if layer != "gpt-value" else _core.GptValue
    x = [V(0.1 * k + 0.05) for k in range(8)]
    w = [[V(0.01 * (j + k)) for j in range(8)] for k in range(5)]
    W = F.matrix(w)
    make = {
        "linear": lambda: F.linear(x, w),
        "linear-numbers": lambda: F.linear([0.5] * 4 + x[4:], w),
        "linear-matrix": lambda: F.linear([0.5] * 4 + x[4:], W),
        "matrix": lambda: list(sum(F.matrix(w), ())),   # (its Values, to compare)
        "linear-relu": lambda: F.linear([-0.5] * 4 + x[4:], w, relu=True),
        "linear-matrix-relu": lambda: F.linear([-0.5] * 4 + x[4:], W, relu=True),
        "linear-bias": lambda: F.linear([-0.5] * 4 + x[4:], w, x[:5]),
        "linear-matrix-bias": lambda: F.linear([-0.5] * 4 + x[4:], W, x[3:], relu=True),
        "rmsnorm": lambda: F.rmsnorm(x),
        "softmax": lambda: F.softmax(x),
        "cross_entropy": lambda: F.cross_entropy(x, 3),
        "attention": lambda: F.attention(x, w[:2], w[:2][::-1], 4),
        "gpt-value": lambda: V(1.0, tuple(x), tuple(range(8))),
    }[layer]
    expected = make()
    expected = [v.data for v in (expected if isinstance(expected, list) else [expected])]
    failures = 0
    for fail_after in range(40):
        before = _core._tape_stats()["live"]
        _core._test_fail_allocs(fail_after)
        try:
            out = make()
        except MemoryError:
            failures += 1
            _core._test_fail_allocs(-1)
            assert _core._tape_stats()["live"] == before
            continue
        finally:
            _core._test_fail_allocs(-1)
        got = out if isinstance(out, list) else [out]
        assert [v.data for v in got] == expected
        break
    assert failures > 0                 # some allocation was made and failed


ELEMENTWISE_GROWTH_FAILURE = """
import gc
from fastgrad import _core, functional as F
V = _core.Value
a, b = V(0.25), V(-1.5)
call, per, value = {"add": (lambda x: F.add(x, [b] * len(x)), 1, -1.25),
                    "mul-numbers": (lambda x: F.mul(x, 2.0), 2, 0.5),   # (each 2.0 a leaf)
                    "relu": (F.relu, 1, 0.25)}[HELPER]
failures = 0
for fail_after in range(40):
    gc.collect()
    stats = _core._tape_stats()
    x = [a] * ((stats["capacity"] - stats["live"]) // per + 1)   # more than is free
    _core._test_fail_allocs(fail_after)
    try:
        out = call(x)
    except MemoryError:
        failures += 1
        _core._test_fail_allocs(-1)
        assert _core._tape_stats()["live"] == stats["live"]
        continue
    finally:
        _core._test_fail_allocs(-1)
    assert _core._tape_stats()["live"] == stats["live"] + per * len(x)
    assert {v.data for v in out} == {value}
    break
assert failures > 0                     # the growth was tried and failed
print("ok")
"""


@compiled
@pytest.mark.parametrize("helper", ["add", "mul-numbers", "relu"])
def test_a_failed_growth_in_an_elementwise_helper_makes_no_node(helper):
    # add, mul and relu allocate nothing of their own: their one allocation is the tape's
    # growth when the call needs more room than is free, which comes (with the handles)
    # before the first node. (In a new interpreter, whose tape is small.)
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", f"HELPER = {helper!r}\n" +
                          ELEMENTWISE_GROWTH_FAILURE], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
