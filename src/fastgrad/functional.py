"""Layers over lists of Values, each built in one engine call: microgpt's `linear`,
`rmsnorm`, `softmax` and multi-head `attention`, and `cross_entropy`; and `add`, `mul`
and `relu`, element by element.

    h = linear(x, w)                 # [sum(wi * xi for wi, xi in zip(row, x)) for row in w]
    h = linear(x, w, b, relu=True)   # [(s + c).relu() for s, c in zip(linear(x, w), b)]
    W = matrix(w)                    # w packed once; linear(x, W) is linear(x, w), faster
    h = rmsnorm(h)                   # [xi * (mean(xi * xi) + eps) ** -0.5 for xi in h]
    h = add(h, skip)                 # [a + b for a, b in zip(h, skip)]; mul likewise
    h = relu(h)                      # [a.relu() for a in h]
    probs = softmax(logits)          # list of Values summing to 1
    h = attention(q, keys, values, n_head)   # microgpt's heads over a KV cache
    loss = cross_entropy(logits, target)     # -log softmax(logits)[target]
    loss.backward()

add, mul and relu make the operators' own nodes, the same graph as the list
expressions; on the compiled engine they only save the Python call per element.

Each builds its nodes in C (on the compiled engine; in Python on the reference), with no
Python call per node: nodes that carry their local derivatives, computed when they are
made, as microgpt's ops do (microgpt's `_local_grads`; op LOCAL). The values are those of
the list expressions, operation for operation, so they agree to the bit; the grads agree
to rounding (the same products, summed in another order). They work with either Value
class (fastgrad.engine's, fastgrad.microgpt's), under no_grad (the results are leaves),
and refuse bad shapes with ValueError and non-Values with TypeError before making any
node. recompute() cannot replay their nodes (their derivatives are constants): rebuild.

softmax and cross_entropy subtract the largest logit first (a constant, so the gradients
are unchanged): every exp is of a number <= 0, so nothing overflows, and cross-entropy
is log-sum-exp minus the target's shifted logit rather than the log of a probability
that may have rounded to 0. At |x| = 1000 both give finite values and gradients.
"""
from __future__ import annotations

import numbers
import operator
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable, Sequence, Union

from fastgrad._engine import ENGINE, ENGINES, engine
from fastgrad.engine import Value

Number = Union[int, float]


# each Value class's engine, for dispatch (each engine's helper checks all the Values)
_ENGINE_OF = {cls: m for m in ENGINES for cls in (m.Value, m.GptValue)}


def _engine_of(values: Sequence[Any]) -> ModuleType:
    # the engine of the first Value among values; with none, the chosen engine's helper
    # raises the error
    for v in values:
        module = _ENGINE_OF.get(type(v))
        if module is not None:
            return module
    return engine


# Each helper looks its engine up from its first Value's type, in a try block. Where the
# compiled engine is the chosen one, the names are then given to its entry points (see
# the end), which do that lookup in C and call these functions for anything else: the
# helpers are called once per layer, so this Python was per-call overhead (the microgpt
# benchmark's overhead table measures it).

def linear(x: Sequence[Value | Number], w: Sequence[Sequence[Value]],
           bias: Sequence[Value] | None = None, *, relu: bool = False) -> list[Value]:
    """[sum(wi * xi for wi, xi in zip(row, x)) for row in w]: one node per row, its
    children the row's weights and x (a number in x becomes a leaf). Every row must have
    len(x) weights; w may be a matrix() of them. Attention works through it too:
    linear(q, keys) gives the logits q . k_t, and
    linear(weights, [[v[j] for v in values] for j ...]) the head's output.

    bias (one Value per row, of the weights' class) gives
    [s + b for s, b in zip(linear(x, w), bias)] in the rows' nodes: a bias, or a residual
    connection. Each row then has one more term, b times a leaf of 1.0 (x's last entry
    for all the rows), which adds b to the sum exactly.
    relu=True gives [s.relu() for s in ...] with the ReLU in the row's node (an MLP's
    hidden layer). Either way the values and, on a fresh graph, the grads are the
    expressions', with one node per row instead of two."""
    try:
        module = _ENGINE_OF[type(w[0][0])]
    except (LookupError, TypeError):        # no rows, an empty row, rows not indexable
        w = w if isinstance(w, list) else list(w)
        if w and not isinstance(w[0], (list, tuple)):
            w = [list(r) for r in w]
        module = _engine_of((w[0][0],) if w and w[0] else tuple(x[:1]))
    return module._linear(x, w, bias, relu)


def matrix(rows: Iterable[Iterable[Value]]) -> Any:
    """rows (equally long, non-empty, of Values of one class) packed for linear(): the
    Values' engine's Matrix, a read-only sequence of the rows as tuples, with `.shape`.
    linear(x, m) gives what linear(x, rows) gives, but the compiled engine checks and
    counts its weights once, here, instead of at every call: pack a layer's weights once
    and pass the Matrix at every step. It holds the Values it was made from."""
    rows = [tuple(r) for r in rows]
    return _engine_of(rows[0][:1] if rows else ()).Matrix(rows)


def rmsnorm(x: Sequence[Value], eps: float = 1e-5) -> list[Value]:
    """ms = sum(xi * xi for xi in x) / len(x); scale = (ms + eps) ** -0.5;
    [xi * scale for xi in x]: scale is one node over x, each output a '*' node."""
    try:
        module = _ENGINE_OF[type(x[0])]
    except (LookupError, TypeError):
        module = _engine_of(x[:1])
    return module._rmsnorm(x, eps)


def softmax(logits: Sequence[Value]) -> list[Value]:
    """exp(x_i - m) / sum_j exp(x_j - m) for each logit, m the largest: microgpt's
    softmax, as n + 1 nodes (the sum, then each probability over its logit and the sum)."""
    try:
        module = _ENGINE_OF[type(logits[0])]
    except (LookupError, TypeError):
        module = _engine_of(logits[:1])
    return module._softmax(logits)


def cross_entropy(logits: Sequence[Value], target: int) -> Value:
    """-log(softmax(logits)[target]) = log(sum_j exp(x_j - m)) - (x_target - m), one node
    over the logits."""
    target = _integer(target, "target must be an int class index")
    if not -len(logits) <= target < len(logits):
        raise IndexError(f"target {target} out of range for {len(logits)} logits")
    try:
        module = _ENGINE_OF[type(logits[0])]
    except (LookupError, TypeError):
        module = _engine_of(logits[:1])
    return module._cross_entropy(logits, target % len(logits))


def attention(q: Sequence[Value], keys: Sequence[Sequence[Value]],
              values: Sequence[Sequence[Value]], n_head: int) -> list[Value]:
    """microgpt's multi-head attention of one position over its KV cache: keys and
    values hold one list per position so far, each as long as q, whose n_head slices of
    hd = len(q) // n_head are the heads. For each head, with q_h, k_h, v_h its slices:
        weights = softmax([linear(q_h, k_h)[t] / hd ** 0.5 for t in positions])
        out += [sum(weights[t] * v_h[t][j] for t in positions) for j in range(hd)]
    It builds what linear, mul, softmax and linear build, node for node but that the
    scaling is in the logits' nodes (no leaf of 1 / hd ** 0.5 and no '*' node per
    logit), so the values and, on a fresh graph, the grads are theirs bit for bit; in
    one call, making handles for the outputs only."""
    n_head = _integer(n_head, "attention: n_head must be an int")
    try:
        module = _ENGINE_OF[type(q[0])]
    except (LookupError, TypeError):
        module = _engine_of(list(q)[:1])
    return module._attention(q, keys, values, n_head)


def add(x: Sequence[Value], y: Sequence[Value | Number] | Number) -> list[Value]:
    """[a + b for a, b in zip(x, y)]: a '+' node per element, as the operator makes it (a
    number becomes a leaf). x holds Values of one class; y as many Values of that class
    or numbers, or one number added to every element."""
    return _elementwise(operator.add, "add", x, y)


def mul(x: Sequence[Value], y: Sequence[Value | Number] | Number) -> list[Value]:
    """[a * b for a, b in zip(x, y)]: a '*' node per element, as the operator makes it (a
    number becomes a leaf). x holds Values of one class; y as many Values of that class
    or numbers, or one number every element is multiplied by."""
    return _elementwise(operator.mul, "mul", x, y)


def relu(x: Sequence[Value]) -> list[Value]:
    """[a.relu() for a in x]: a ReLU node per element; x holds Values of one class."""
    xs = _values_of_one_class("relu", x)
    return [a.relu() for a in xs]


def _integer(x: Any, what: str) -> int:
    """x as an int where an index or a count is meant: an int or another Integral (numpy's
    integers, as list indexing takes them); never a bool, Python's or numpy's (which
    older numpy still lets __index__ read as 0 or 1)."""
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        return operator.index(x)
    raise TypeError(f"{what}, not {type(x).__name__!r}")


def _values_of_one_class(name: str, x: Iterable[Any]) -> list[Any]:
    xs = list(x)
    if xs:
        cls = type(xs[0])
        if cls not in _ENGINE_OF:
            raise TypeError(f"{name}: x must hold Values, not {cls.__name__!r}")
        for a in xs:
            if type(a) is not cls:
                raise TypeError(f"{name}: x must hold Values of one class, not "
                                f"{cls.__name__!r} and {type(a).__name__!r}")
    return xs


def _elementwise(op: Any, name: str, x: Sequence[Any], y: Any) -> list[Any]:
    # every element checked before the first node is made
    xs = _values_of_one_class(name, x)
    if not isinstance(y, (list, tuple)):
        if not isinstance(y, (int, float)):
            raise TypeError(f"{name}: y must be Values or numbers, not {type(y).__name__!r}")
        return [op(a, y) for a in xs]
    if len(y) != len(xs):
        raise ValueError(f"{name}: x has {len(xs)} elements and y {len(y)}")
    cls = type(xs[0]) if xs else None
    for b in y:
        if type(b) is not cls and not isinstance(b, (int, float)):
            raise TypeError(f"{name}: y must hold Values of x's class or numbers, not "
                            f"{type(b).__name__!r}")
    return [op(a, b) for a, b in zip(xs, y)]


# where the compiled engine is the chosen one, its entry points in place of the eight
# helpers: the dispatch above, done in C, with the same results and errors (anything
# not its own goes to the functions above)
if not TYPE_CHECKING and ENGINE == "compiled":
    linear, rmsnorm, softmax, cross_entropy, add, mul, relu, attention = engine._fast_helpers(
        linear, rmsnorm, softmax, cross_entropy, add, mul, relu, attention)
