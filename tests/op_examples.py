"""The per-op example table: one row per op of fastgrad.ops.Op, and every op-driven test
reads it (closed forms and gradcheck in test_op_table.py, the compiled-against-reference
and replay-equals-rules tests there too, the hypothesis programs of graphs.py, the fuzz
target's op choices). An op without a row fails test_opcodes.py, naming it.

A row says how to make a node of the op from input Values (`make(V, xs, k)`, k the op's
constant parameter or None), at which inputs to check it (`cases`), its closed-form value
and derivative per input, which inputs may be plain numbers, the parameters random
programs may draw, and its local derivatives on a reference-engine node in IEEE
arithmetic (inf or nan where Python would raise), which the fuzz and replay tests use to
scale their tolerances.
"""
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from fastgrad import functional, reference
from fastgrad.ops import Op


@dataclass(frozen=True)
class Example:
    make: Callable[..., Any]                  # make(V, xs, k) -> the op's node
    cases: list                               # [(xs, k)]: inputs inside the op's domain
    value: Callable[..., float]               # value(xs, k): closed form of the node
    grads: Callable[..., tuple]               # grads(xs, k): d node / d xs[i], closed form
    local: Callable[[Any], list]              # local(v): [(child, d v / d child)], IEEE
    numbers: tuple = ()                       # inputs that may be plain numbers instead
    params: list = field(default_factory=lambda: [None])   # k for random programs
    replayable: bool = True                   # recompute() can re-evaluate its node


def unary(f, local_of_out=None, local_of_in=None, **kw):
    """A row for an op on one Value, made by method name f (a string)."""
    def local(v):
        (a,) = v._children
        return [(a, local_of_out(v._data) if local_of_out else local_of_in(a._data))]
    return dict(make=lambda V, xs, k: getattr(xs[0], f)(), local=local, **kw)


def sigmoid(x):
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def lecture_tanh(V, x):
    """tanh added the lecture's way: a node of its own value with a Python _backward."""
    t = math.tanh(x.data)
    out = V(t, (x,), 'tanh')

    def _backward():
        x.grad += (1 - t ** 2) * out.grad
    out._backward = _backward
    return out


def custom_local(v):
    # the lecture-style ops the tests make (lecture_tanh, graphs.custom_unary): tanh, exp
    t = v._data
    d = {"tanh": 1 - t * t, "exp": t}.get(v._op)
    return [] if d is None else [(c, d) for c in v._children]


def affine_local(v):
    b, *terms = v._children
    pairs = [(b, 1.0)]
    for k in range(0, len(terms), 2):
        w, x = terms[k], terms[k + 1]
        pairs += [(w, x._data), (x, w._data)]
    return pairs


EXPONENTS = [2, 3, -1, -2, 0, 1, 0.5, 1.5, 2.0, -0.5, True]

EXAMPLES = {
    Op.LEAF: Example(
        make=lambda V, xs, k: xs[0], cases=[((3.5,), None)],
        value=lambda xs, k: xs[0], grads=lambda xs, k: (1.0,), local=lambda v: []),
    Op.ADD: Example(
        make=lambda V, xs, k: xs[0] + xs[1], cases=[((1.7, -0.6), None), ((0.0, -0.0), None)],
        value=lambda xs, k: xs[0] + xs[1], grads=lambda xs, k: (1.0, 1.0),
        local=lambda v: [(v._children[0], 1.0), (v._children[1], 1.0)], numbers=(0, 1)),
    Op.MUL: Example(
        make=lambda V, xs, k: xs[0] * xs[1], cases=[((1.7, -0.6), None)],
        value=lambda xs, k: xs[0] * xs[1], grads=lambda xs, k: (xs[1], xs[0]),
        local=lambda v: [(v._children[0], v._children[1]._data),
                         (v._children[1], v._children[0]._data)], numbers=(0, 1)),
    Op.POW: Example(
        make=lambda V, xs, k: xs[0] ** k,
        cases=[((1.7,), 3), ((1.7,), -0.5), ((-1.3,), 2), ((2.0,), -1), ((1.7,), 0)],
        value=lambda xs, k: xs[0] ** k, grads=lambda xs, k: (k * xs[0] ** (k - 1),),
        local=lambda v: [(v._children[0],
                          float(v._k) * reference._pow_ieee(abs(v._children[0]._data), v._k - 1))],
        params=EXPONENTS),
    Op.RELU: Example(
        **unary("relu", local_of_out=lambda t: float(t > 0)),
        cases=[((2.5,), None), ((-2.5,), None)],
        value=lambda xs, k: max(xs[0], 0.0), grads=lambda xs, k: (float(xs[0] > 0),)),
    Op.TANH: Example(
        **unary("tanh", local_of_out=lambda t: 1 - t * t),
        cases=[((0.3,), None), ((-1.2,), None)],
        value=lambda xs, k: math.tanh(xs[0]), grads=lambda xs, k: (1 - math.tanh(xs[0]) ** 2,)),
    Op.EXP: Example(
        **unary("exp", local_of_out=lambda t: t),
        cases=[((0.3,), None), ((-1.2,), None)],
        value=lambda xs, k: math.exp(xs[0]), grads=lambda xs, k: (math.exp(xs[0]),)),
    Op.CUSTOM: Example(
        make=lambda V, xs, k: lecture_tanh(V, xs[0]), cases=[((0.3,), None)],
        value=lambda xs, k: math.tanh(xs[0]), grads=lambda xs, k: (1 - math.tanh(xs[0]) ** 2,),
        local=lambda v: custom_local(v), replayable=False),
    Op.AFFINE: Example(
        make=lambda V, xs, k: V._affine(xs[0], [xs[1], xs[3]], [xs[2], xs[4]]),
        cases=[((0.5, 1.7, -0.6, 0.25, 3.0), None)],
        value=lambda xs, k: xs[0] + xs[1] * xs[2] + xs[3] * xs[4],
        grads=lambda xs, k: (1.0, xs[2], xs[1], xs[4], xs[3]),
        local=affine_local, numbers=(2, 4)),
    Op.LOG: Example(
        **unary("log", local_of_in=lambda a: reference._div_ieee(1.0, a)),
        cases=[((0.3,), None), ((2.5,), None)],
        value=lambda xs, k: math.log(xs[0]), grads=lambda xs, k: (1 / xs[0],)),
    Op.SIGMOID: Example(
        **unary("sigmoid", local_of_out=lambda t: t * (1 - t)),
        cases=[((0.7,), None), ((-2.3,), None)],
        value=lambda xs, k: sigmoid(xs[0]),
        grads=lambda xs, k: (sigmoid(xs[0]) * (1 - sigmoid(xs[0])),)),
    Op.SQRT: Example(
        **unary("sqrt", local_of_out=lambda t: reference._div_ieee(1.0, 2.0 * t)),
        cases=[((0.25,), None), ((2.0,), None)],
        value=lambda xs, k: math.sqrt(xs[0]), grads=lambda xs, k: (0.5 / math.sqrt(xs[0]),)),
    Op.ABS: Example(
        **unary("__abs__", local_of_in=lambda a: a if math.isnan(a) else float(a > 0) - float(a < 0)),
        cases=[((2.5,), None), ((-2.5,), None)],
        value=lambda xs, k: abs(xs[0]), grads=lambda xs, k: (math.copysign(1.0, xs[0]),)),
    Op.POWV: Example(
        make=lambda V, xs, k: xs[0] ** xs[1], cases=[((1.7, -0.6), None), ((0.5, 2.0), None)],
        value=lambda xs, k: xs[0] ** xs[1],
        grads=lambda xs, k: (xs[1] * xs[0] ** (xs[1] - 1), xs[0] ** xs[1] * math.log(xs[0])),
        local=lambda v: [
            (v._children[0], v._children[1]._data
             * reference._pow_ieee(v._children[0]._data, v._children[1]._data - 1)),
            (v._children[1], v._data * reference._log_ieee(v._children[0]._data))],
        numbers=(0,)),
    Op.LOCAL: Example(
        # a LOCAL node as the fused helpers make it: one row of linear, over x = xs[:2]
        make=lambda V, xs, k: functional.linear([xs[0], xs[1]], [[xs[2], xs[3]]])[0],
        cases=[((0.5, -1.2, 1.7, 0.3), None)],
        value=lambda xs, k: xs[2] * xs[0] + xs[3] * xs[1],
        grads=lambda xs, k: (xs[2], xs[3], xs[0], xs[1]),
        local=lambda v: list(zip(v._children, v._k)), numbers=(0, 1), replayable=False),
}

# the ops random programs can apply (a LEAF is no step)
PROGRAM_OPS = sorted((op for op in EXAMPLES if op != Op.LEAF), key=int)
REPLAYABLE_OPS = [op for op in PROGRAM_OPS if EXAMPLES[op].replayable]


def inputs_of(op):
    """How many Values a node of the op is made from."""
    return len(EXAMPLES[op].cases[0][0])


def build_example(V, op, case=0):
    """(leaves, node): the op's node made from fresh leaves at the given case."""
    xs, k = EXAMPLES[op].cases[case]
    leaves = [V(x) for x in xs]
    return leaves, EXAMPLES[op].make(V, leaves, k)


def operand_combinations(V, op, case):
    """The case's inputs as all Values, then with each input that may be a number as one:
    yields (operands, leaves), leaves[i] the Value at input i or None."""
    xs, k = EXAMPLES[op].cases[case]
    leaves = [V(x) for x in xs]
    yield leaves, leaves
    for p in EXAMPLES[op].numbers:
        leaves = [None if i == p else V(x) for i, x in enumerate(xs)]
        yield [xs[p] if i == p else v for i, v in enumerate(leaves)], leaves


def local_derivatives(v):
    """(child, local derivative) pairs of a reference-engine node, children repeated."""
    row = EXAMPLES.get(v._code)
    if row is None:
        raise LookupError(f"Op.{Op(v._code).name} has no row in tests/op_examples.py")
    return row.local(v)
