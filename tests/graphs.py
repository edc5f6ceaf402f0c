"""Random expression programs, run on micrograd and on fastgrad's engines side by side.

A program is a list of steps drawn by hypothesis. `run` replays it on one Value class;
micrograd runs first and decides which steps are skipped (an op that raises, or whose
result is not finite, above 1e6 or below 1e-6 in magnitude), so that every engine builds
the same graph.
"""
import math

from hypothesis import strategies as st

from op_examples import EXAMPLES, EXPONENTS, REPLAYABLE_OPS, inputs_of, local_derivatives

from fastgrad.viz import trace  # noqa: F401  (the lecture's trace(), iterative; tests use it)

BINARY = ["add", "mul", "sub", "div"]
UNARY = ["neg", "relu", "tanh", "exp", "custom_tanh", "custom_exp"]

index = st.integers(0, 10_000)
# magnitudes between 1e-3 and 4 (or 0): micrograd's own backward overflows on tiny ones
real = st.floats(-4, 4, allow_nan=False).filter(lambda x: x == 0 or abs(x) > 1e-3)
const = st.one_of(real, st.integers(-3, 3))
step = st.one_of(
    st.tuples(st.just("bin"), st.sampled_from(BINARY), index, index),
    st.tuples(st.just("lconst"), st.sampled_from(BINARY), index, const),
    st.tuples(st.just("rconst"), st.sampled_from(BINARY), const, index),
    st.tuples(st.just("unary"), st.sampled_from(UNARY), index),
    st.tuples(st.just("pow"), index, st.sampled_from(EXPONENTS)),
    st.tuples(st.just("backward"), index),
)
leaves = st.lists(real, min_size=1, max_size=6)
programs = st.tuples(leaves, st.lists(step, min_size=1, max_size=60))

# built-in ops only, no backward steps: graphs that recompute() can replay
native_step = st.one_of(
    st.tuples(st.just("bin"), st.sampled_from(BINARY), index, index),
    st.tuples(st.just("lconst"), st.sampled_from(BINARY), index, const),
    st.tuples(st.just("rconst"), st.sampled_from(BINARY), const, index),
    st.tuples(st.just("unary"), st.sampled_from(["neg", "relu", "tanh", "exp"]), index),
    st.tuples(st.just("pow"), index, st.sampled_from(EXPONENTS)),
    st.tuples(st.just("affine"), index, index, index, const),
    # every replayable op of the example table, made as its row makes it
    st.tuples(st.just("op"), st.sampled_from(REPLAYABLE_OPS), st.lists(index, min_size=5, max_size=5),
              index),
)
native_programs = st.tuples(leaves, st.lists(native_step, min_size=1, max_size=60))


def custom_unary(Value, v, name):
    """tanh/exp added the way the lecture adds tanh: a new node with a Python _backward."""
    t = math.tanh(v.data) if name == "tanh" else math.exp(v.data)
    out = Value(t, (v,), name)

    def _backward():
        v.grad += ((1 - t ** 2) if name == "tanh" else t) * out.grad
    out._backward = _backward
    return out


def binary(name, a, b):
    if name == "add":
        return a + b
    if name == "mul":
        return a * b
    if name == "sub":
        return a - b
    return a / b


def unary(Value, name, a, native):
    if name == "neg":
        return -a
    if name == "relu":
        return a.relu()
    if name.startswith("custom_") or not native:
        return custom_unary(Value, a, name.removeprefix("custom_"))
    return a.tanh() if name == "tanh" else a.exp()


def one_step(Value, s, nodes, native):
    kind = s[0]
    pick = lambda i: nodes[i % len(nodes)]
    if kind == "bin":
        return binary(s[1], pick(s[2]), pick(s[3]))
    if kind == "lconst":
        return binary(s[1], pick(s[2]), s[3])
    if kind == "rconst":
        return binary(s[1], s[2], pick(s[3]))
    if kind == "unary":
        return unary(Value, s[1], pick(s[2]), native)
    if kind == "op":
        row = EXAMPLES[s[1]]
        return row.make(Value, [pick(i) for i in s[2][:inputs_of(s[1])]],
                        row.params[s[3] % len(row.params)])
    if kind == "affine":            # b + w0 * x0 + w1 * x1 as one node (fastgrad only)
        return Value._affine(pick(s[1]), [pick(s[2]), pick(s[3])], [pick(s[3]), s[4]])
    return pick(s[1]) ** s[2]


def pick_data(nodes, i):
    return nodes[i % len(nodes)].data


def run(Value, program, skips=None, native=True, on_backward=None, holes=False):
    """Replays program; returns (nodes, skips, roots). native=False builds tanh and exp
    as custom ops (micrograd has neither). skips=None: decide them here (the oracle).
    holes=True frees, before every other step, a node made before the leaves: fastgrad
    reuses its slot, so some nodes sit below their children in the arena."""
    leaf_data, steps = program
    spare = [Value(0.0) for _ in range(len(steps))] if holes else []
    nodes = [Value(float(x)) for x in leaf_data]
    deciding = skips is None
    skips = [] if deciding else list(skips)
    roots = []
    for n, s in enumerate(steps):
        if spare and n % 2:
            spare.pop()
        if s[0] == "backward":
            root = nodes[s[1] % len(nodes)]
            root.backward()
            roots.append(s[1] % len(nodes))
            if on_backward:
                on_backward(root)
            continue
        if deciding:
            if s[0] == "pow" and pick_data(nodes, s[1]) == 0 and s[2] < 1:
                skips.append(n)     # micrograd's backward would raise ZeroDivisionError
                continue
            try:
                out = one_step(Value, s, nodes, native)
            except (ArithmeticError, ValueError, TypeError):
                skips.append(n)
                continue
            d = out.data
            if isinstance(d, complex) or not math.isfinite(d) or abs(d) > 1e6 or 0 < abs(d) < 1e-6:
                skips.append(n)
                continue
        elif n in skips:
            continue
        else:
            out = one_step(Value, s, nodes, native)
        nodes.append(out)
    return nodes, skips, roots


class Magnitudes:
    """Tracks, per node of a reference-engine graph, the sum of |terms| added into its grad.

    Engines sum a node's grad terms in different orders (micrograd's follows set
    iteration), so grads agree to a rounding error relative to this sum, not to the grad.
    """
    def __init__(self):
        self.m = {}

    def backward(self, root):
        topo, seen, stack = [], set(), [(root, False)]
        while stack:
            v, done = stack.pop()
            if done:
                topo.append(v)
            elif id(v) not in seen:
                seen.add(id(v))
                stack.append((v, True))
                stack.extend((c, False) for c in v._children)
        self.m[id(root)] = 1.0
        for v in reversed(topo):
            mv = self.m.get(id(v), 0.0)
            for c, d in local_derivatives(v):
                self.m[id(c)] = self.m.get(id(c), 0.0) + abs(d) * mv

    def of(self, v):
        return self.m.get(id(v), 0.0)


def close(x, y, scale, rel=1e-9):
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return x == y or abs(x - y) <= rel * (scale + abs(x) + abs(y))


def shape(root):
    """What a graph printer would show, independent of object identity."""
    nodes, edges = trace(root)
    return len(nodes), len(edges), sorted(str(n._op) for n in nodes)
