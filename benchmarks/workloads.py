"""Named workloads, each runnable on every engine on the same seeded inputs.

Engines: `fastgrad` (the compiled engine), `reference` (fastgrad's pure-Python engine),
`micrograd` (upstream, if installed; tanh and exp added the lecture's way, as custom
nodes), `float` (the floor: the same forward arithmetic on plain Python floats) and
`torch` (0-dim tensors, or batched tensors for mlp-step; only if installed).

A workload is prepared once per engine and then run in rounds: `setup()` builds what a
round needs outside the timer, `run(state)` is what is timed, and `result(state)` gives
the numbers that are compared with the reference engine's (a fast wrong answer is flagged).
"""
import contextlib
import functools
import gc
import math
import random

from fastgrad import demo, nn, reference
from fastgrad.datasets import make_moons
from fastgrad.ops import Op

try:
    import micrograd.engine
    import micrograd.nn
except ImportError:      # upstream micrograd is a benchmark dependency, but optional here
    micrograd = None

try:
    import torch
except ImportError:
    torch = None


# ------------------------------------------------------------------------------ engines
# Every engine is an adapter: the workloads drive them all through the same methods, and
# RUNS (below the workloads) is the one table of which engine runs which workload.

def lecture_unary(Value, fn, dfn, name):
    """An op added to a Value class the way the lecture adds tanh: a node whose Python
    _backward closes over its input."""
    def op(v):
        t = fn(v.data)
        out = Value(t, (v,), name)

        def _backward():
            v.grad += dfn(t, v.data) * out.grad
        out._backward = _backward
        return out
    return op


class Engine:
    """A scalar autograd engine as the workloads see it: leaves, the ops, numbers read
    back, no_grad, and micrograd's demo model and step."""
    name = ""

    def __init__(self, Value):
        self.Value = Value
        # the methods themselves, not wrappers: an extra Python call per op would be timed
        self.tanh = getattr(Value, "tanh", None)
        self.exp = getattr(Value, "exp", None)

    def data(self, v):
        return float(v.data)

    def grad(self, v):
        return 0.0 if v.grad is None else float(v.grad)

    def no_grad(self):
        import fastgrad
        return fastgrad.no_grad()

    def run_ops(self, steps, nodes):
        return run_values(steps, nodes, self.tanh, self.exp)

    def mlp(self, fused=False):
        """micrograd's demo model, MLP(2, [16, 16, 1]), on seed 1337's draws."""
        random.seed(1337)
        return nn.using(self.Value).MLP(2, [16, 16, 1], fused=fused)

    def demo_step(self, model, X, y):
        demo.step(model, X, y, 0, Value=self.Value)

    def weights(self, model):
        return [float(p.data) for p in model.parameters()]


class Fastgrad(Engine):
    name = "fastgrad"


class Reference(Engine):
    name = "reference"


class Micrograd(Engine):
    """Upstream micrograd: tanh and exp added the lecture's way, its own nn."""
    name = "micrograd"

    def __init__(self):
        V = micrograd.engine.Value
        super().__init__(V)
        self.tanh = lecture_unary(V, math.tanh, lambda t, x: 1 - t * t, "tanh")
        self.exp = lecture_unary(V, math.exp, lambda t, x: t, "exp")

    def mlp(self, fused=False):
        random.seed(1337)
        return micrograd.nn.MLP(2, [16, 16, 1])


class Floats(Engine):
    """The floor: the same forward arithmetic on plain Python floats, no graph."""
    name = "float"

    def __init__(self):
        super().__init__(float)

    def data(self, v):
        return v

    def no_grad(self):
        return contextlib.nullcontext()

    def run_ops(self, steps, nodes):
        return run_floats(steps, nodes)


class Torch(Engine):
    """PyTorch on one thread: 0-dim float64 tensors for the graph workloads, batched
    tensors for the demo step (what a tensor library does with this model)."""
    name = "torch"

    def __init__(self):
        # one thread: what the scalar engines get (on 2 cores, a second torch thread made
        # the batched demo step 3x slower, 1.9 against 0.61 ms, measured 2026-12-02)
        torch.set_num_threads(1)
        super().__init__(lambda x: torch.tensor(float(x), dtype=torch.float64, requires_grad=True))
        self.tanh, self.exp = torch.tanh, torch.exp
        self.batches = {}               # the demo's data as tensors, made once (untimed)

    def data(self, v):
        return v.item()

    def grad(self, v):
        return 0.0 if v.grad is None else v.grad.item()

    def no_grad(self):
        return torch.no_grad()

    def mlp(self, fused=False):
        m = Reference(reference.Value).mlp()          # the same weights, as tensors
        W = []
        for layer in m.layers:
            w = torch.tensor([[p.data for p in n.w] for n in layer.neurons],
                             dtype=torch.float64, requires_grad=True)
            b = torch.tensor([n.b.data for n in layer.neurons],
                             dtype=torch.float64, requires_grad=True)
            W.append((w, b))
        return W

    def mlp_data(self, X, y):
        key = (id(X), id(y))
        if key not in self.batches:
            self.batches[key] = (torch.tensor(X, dtype=torch.float64),
                                 torch.tensor(y, dtype=torch.float64))
        return self.batches[key]

    def demo_step(self, W, X, y):
        torch_mlp_step(W, *self.mlp_data(X, y))

    def weights(self, W):                 # in parameters() order: each neuron's w, then b
        return [x for w, b in W for row, bias in zip(w.tolist(), b.tolist()) for x in row + [bias]]


def engines():
    """The engines available here, by name."""
    from fastgrad import _core
    found = {"float": Floats(), "fastgrad": Fastgrad(_core.Value),
             "reference": Reference(reference.Value)}
    if micrograd is not None:
        found["micrograd"] = Micrograd()
    if torch is not None:
        found["torch"] = Torch()
    return found


def settle_heap():
    """Put every object made so far out of the cyclic GC's sight (gc.freeze), once the
    bench has imported what it needs. A collection walks every tracked object, so the
    engines whose graphs are reference cycles (micrograd, the reference, the microgpt-style
    baseline) would otherwise pay for the bench's imports: with torch's objects in the
    heap (~165k once imported, ~280k once it has made an optimizer) the microgpt-style
    step took 270-300 ms instead of 150-180 (2026-12-04), inflating every ratio against
    those engines. With it, a collection walks what the workloads make, as in a script
    that imports only its engine; torch installed or not, the same."""
    if torch is not None:
        # making torch's first optimizer imports its compiler stack (~800 modules, sympy
        # among them, ~117k objects): make one now, so that they are frozen too
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    gc.collect()
    gc.freeze()


# ---------------------------------------------------------------------------------- ops

N_LEAVES = 64
OPS_MIX = [Op.ADD, Op.ADD, Op.MUL, Op.MUL, Op.POW, Op.RELU, Op.TANH, Op.EXP]


def ops_program(n_nodes=200_000, seed=0):
    """A seeded program of mixed ops on N_LEAVES leaves, reusing earlier nodes.

    Operands are drawn uniformly from all earlier nodes (a shallow, wide DAG, so that
    micrograd's recursive backward copes). The program is simulated on floats while it is
    drawn, and an op whose result would leave [-4, 4] becomes a tanh, so every engine
    computes finite values. The nodes no op used are then summed pairwise into one root,
    so that backward from the root reaches every node. Returns (leaves, steps, root_steps)
    with steps (op, i, j) indexing the node list.
    """
    rnd = random.Random(seed)
    leaves = [rnd.uniform(-1, 1) for _ in range(N_LEAVES)]
    vals = list(leaves)
    used = [False] * (N_LEAVES + n_nodes)
    steps = []
    while len(vals) < N_LEAVES + n_nodes - 1:
        op = rnd.choice(OPS_MIX)
        i, j = rnd.randrange(len(vals)), rnd.randrange(len(vals))
        a, b = vals[i], vals[j]
        v = {Op.ADD: lambda: a + b, Op.MUL: lambda: a * b, Op.POW: lambda: a ** 2,
             Op.RELU: lambda: a if a > 0 else 0.0, Op.TANH: lambda: math.tanh(a),
             Op.EXP: lambda: math.exp(a)}[op]()
        if not -4.0 <= v <= 4.0:
            op, v = Op.TANH, math.tanh(a)
        used[i] = True
        if op in (Op.ADD, Op.MUL):
            used[j] = True
        steps.append((int(op), i, j))
        vals.append(v)
    # pairwise sum of the sinks: depth log2(n), so no engine recurses deeply
    level = [k for k in range(len(vals)) if not used[k]]
    while len(level) > 1:
        nxt = []
        for k in range(0, len(level) - 1, 2):
            steps.append((int(Op.ADD), level[k], level[k + 1]))
            nxt.append(len(vals))
            vals.append(vals[level[k]] + vals[level[k + 1]])
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return leaves, steps, level[0]


def run_values(steps, nodes, tanh, exp):
    """Executes an ops program on Value-like nodes (appending to nodes)."""
    ADD, MUL, POW, RELU, TANH = Op.ADD, Op.MUL, Op.POW, Op.RELU, Op.TANH
    append = nodes.append
    for op, i, j in steps:
        a = nodes[i]
        if op == ADD:
            r = a + nodes[j]
        elif op == MUL:
            r = a * nodes[j]
        elif op == POW:
            r = a ** 2
        elif op == RELU:
            r = a.relu()
        elif op == TANH:
            r = tanh(a)
        else:
            r = exp(a)
        append(r)
    return nodes


def run_floats(steps, nodes):
    """The floor: the same program on plain floats, ops written inline where Python can."""
    ADD, MUL, POW, RELU, TANH = Op.ADD, Op.MUL, Op.POW, Op.RELU, Op.TANH
    tanh, exp = math.tanh, math.exp
    append = nodes.append
    for op, i, j in steps:
        a = nodes[i]
        if op == ADD:
            r = a + nodes[j]
        elif op == MUL:
            r = a * nodes[j]
        elif op == POW:
            r = a ** 2
        elif op == RELU:
            r = a if a > 0.0 else 0.0
        elif op == TANH:
            r = tanh(a)
        else:
            r = exp(a)
        append(r)
    return nodes


def settled_live_nodes():
    """The compiled arena's live nodes once garbage is gone. (A dead graph of lecture-style
    ops goes one level per collection: the tape holds each such node's handle while a
    parent lives, and the handle's closure holds the node.)"""
    from fastgrad import _core
    live = None
    while live != _core._tape_stats()["live"]:
        live = _core._tape_stats()["live"]
        gc.collect()
    return live


class Workload:
    """A named workload: setup(engine) outside the timer, run(state) timed,
    result(state) compared with the reference engine's answer."""
    name = unit = ""
    scale = 1.0          # a round's seconds / per * scale is in `unit`
    counts = None        # what `per` counts, measured on the compiled engine: the nodes
                         # run() makes ("made"), those reachable from root(state)
                         # ("reachable"); None: per is 1, or set by the workload
    rounds = {"fastgrad": 7, "reference": 3, "micrograd": 3, "torch": 3, "float": 7}
    takes_turns_with = None     # the workload this one is compared with: measured with
                                # it, round for round (run.py's measure)

    @property
    def engines(self):
        return RUNS[self.name]

    @functools.cached_property
    def per(self):
        """What a round's seconds are divided by: nodes, counted on the compiled engine
        (its arena's live nodes before and after), not by hand."""
        if self.counts is None:
            return 1
        from fastgrad.viz import trace
        state = self.setup(engines()["fastgrad"])
        before = settled_live_nodes()
        if self.counts == "reachable":
            return len(trace(self.root(state))[0])
        self.run(state)
        return settled_live_nodes() - before

    def setup(self, engine):
        raise NotImplementedError

    def run(self, state):
        raise NotImplementedError

    def result(self, state):
        raise NotImplementedError


class Ops(Workload):
    """Forward: build the 200k-node mixed-op graph (ns per node made by an op)."""
    name, unit, scale, counts = "ops", "ns/op", 1e9, "made"

    def __init__(self, n_nodes=200_000):
        self.leaves, self.steps, self.root_index = ops_program(n_nodes)

    def setup(self, engine):
        return engine, [engine.Value(x) for x in self.leaves]

    def run(self, state):
        engine, nodes = state
        engine.run_ops(self.steps, nodes)

    def result(self, state):
        engine, nodes = state
        return [engine.data(nodes[self.root_index])]


class Backward(Ops):
    """backward() on the ops graph, rebuilt outside the timer each round (ns per node)."""
    name, unit, counts = "backward", "ns/node", "reachable"

    def setup(self, engine):
        engine, nodes = super().setup(engine)
        engine.run_ops(self.steps, nodes)
        return engine, nodes

    def root(self, state):
        return state[1][self.root_index]

    def run(self, state):
        self.root(state).backward()

    def result(self, state):
        engine, nodes = state
        return [engine.grad(v) for v in nodes[:N_LEAVES]]


# ----------------------------------------------------------------------------- mlp-step

def torch_mlp_step(W, X, y, k=0):
    """micrograd's demo step as batched tensors: what a tensor library does with this model."""
    h = X
    for n, (w, b) in enumerate(W):
        h = h @ w.T + b
        if n < len(W) - 1:
            h = h.relu()
    scores = h[:, 0]
    data_loss = (1 + -y * scores).relu().mean()
    reg_loss = 1e-4 * sum((w * w).sum() + (b * b).sum() for w, b in W)
    total = data_loss + reg_loss
    for w, b in W:
        w.grad = None
        b.grad = None
    total.backward()
    lr = 1.0 - 0.9 * k / 100
    with torch.no_grad():
        for w, b in W:
            w -= lr * w.grad
            b -= lr * b.grad
    return total.item()


class MlpStep(Workload):
    """One training step of micrograd's moons demo: 100 points, MLP(2, [16, 16, 1])."""
    name, unit, scale = "mlp-step", "ms/step", 1e3
    rounds = {"fastgrad": 7, "reference": 3, "micrograd": 3, "torch": 21}

    def __init__(self):
        self.X, self.y = make_moons(100, 0.1, seed=1337)

    def setup(self, engine):
        if engine.name == "torch":
            engine.mlp_data(self.X, self.y)     # (its tensors, made outside the timer)
        return engine, engine.mlp()

    def run(self, state):
        engine, model = state
        engine.demo_step(model, self.X, self.y)

    def result(self, state):
        engine, model = state
        return engine.weights(model)        # after the step: they depend on every grad


class MlpStepWithEval(MlpStep):
    """mlp-step in the usual "print the accuracy" loop: before each step an evaluation
    graph (the model's scores on 50 points) is built and dropped."""
    name = "mlp-step-with-eval"
    rounds = {"fastgrad": 7, "reference": 3, "micrograd": 3}

    def evaluate(self, state):
        engine, model = state
        V = engine.Value
        scores = [model([V(a), V(b)]) for a, b in self.X[:50]]
        return demo.accuracy(self.y[:50], scores)

    def setup(self, engine):
        state = super().setup(engine)
        engine.demo_step(state[1], self.X, self.y)      # untimed: a loop's steady state
        return state

    def run(self, state):
        self.evaluate(state)
        super().run(state)


class MlpBackward(MlpStepWithEval):
    """backward() of the demo step's loss graph as a training loop builds it: after a
    whole step died (ns per node; compare mlp-eval-backward)."""
    name, unit, scale, counts = "mlp-backward", "ns/node", 1e9, "reachable"
    rounds = {"fastgrad": 9, "reference": 3, "micrograd": 3}
    with_eval = False

    def setup(self, engine):
        state = super().setup(engine)
        if self.with_eval:
            self.evaluate(state)        # built and dropped between the steps
        loss, _ = demo.build(state[1], self.X, self.y, Value=engine.Value)
        return state + (loss,)

    def root(self, state):
        return state[2]

    def run(self, state):
        state[2].backward()

    def result(self, state):
        return [state[0].grad(p) for p in state[1].parameters()]


class MlpEvalBackward(MlpBackward):
    """mlp-backward with an evaluation graph built and dropped between the steps: the
    same graph, on slots the evaluation graph's death freed (ns per node). The two take
    turns, round for round: a round is one backward of ~0.5 ms, and runs a few seconds
    apart read 1.0-1.6x on this machine with the same code."""
    name, with_eval = "mlp-eval-backward", True
    takes_turns_with = "mlp-backward"


class MlpReplay(MlpStep):
    """The same demo step on a graph built once: recompute(), zero_grad, backward, SGD.
    torch keeps no graph to replay: its cell is mlp-step's batched step, measured again
    here, next to fastgrad's replay, and warmed up as the replay is (one untimed step
    first, on a copy of the weights, so that the timed step starts from the same ones)."""
    name = "mlp-replay"
    compare_to = "mlp-step"             # micrograd has no replay: its rebuilding step
    rounds = {"fastgrad": 21, "reference": 3, "torch": 21}

    fused = False

    def setup(self, engine):
        from fastgrad import optim
        if engine.name == "torch":
            engine.demo_step(engine.mlp(), self.X, self.y)
            return engine, (engine.mlp(), None, None)
        model = engine.mlp(fused=self.fused)
        loss, _ = demo.build(model, self.X, self.y, Value=engine.Value)
        # untimed, as a replay loop's first step: backward() orders the graph and the first
        # recompute() builds its replay (steady state is what a long loop runs at)
        loss.backward()
        loss.recompute()
        return engine, (model, loss, optim.SGD(model.parameters(), lr=1.0))

    def run(self, state):
        engine, (model, loss, opt) = state
        if loss is None:            # (torch)
            engine.demo_step(model, self.X, self.y)
            return
        loss.recompute()            # (the data is unchanged here, so it equals mlp-step's)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def result(self, state):
        return state[0].weights(state[1][0])


class MlpReplayFused(MlpReplay):
    """mlp-replay with MLP(..., fused=True): one 'affine' node per neuron."""
    name, fused = "mlp-replay-fused", True


class OpsReplay(Backward):
    """recompute() and backward() together on the ops graph, built once (ns per node)."""
    name = "ops-replay"

    def setup(self, engine):
        state = super().setup(engine)
        self.root(state).backward()     # untimed, as mlp-replay's setup
        self.root(state).recompute()
        return state

    def run(self, state):
        self.root(state).recompute()
        self.root(state).backward()


# ------------------------------------------------------------------------- chain, wide

class Chain(Workload):
    """x = x * 1.0001 + 0.5, 100k times, then backward (build and backward, ms)."""
    name, unit, scale = "chain", "ms", 1e3
    rounds = {"fastgrad": 5, "reference": 3, "micrograd": 1}

    def __init__(self, steps=100_000):
        self.steps = steps

    def setup(self, engine):
        return engine, [engine.Value(1.0)]

    def run(self, state):
        engine, xs = state
        y = xs[0]
        for _ in range(self.steps):
            y = y * 1.0001 + 0.5
        xs.append(y)
        y.backward()

    def result(self, state):
        return [state[0].grad(state[1][0])]


class Wide(Workload):
    """sum() of 1M leaves, then backward (build and backward, ms)."""
    name, unit, scale = "wide", "ms", 1e3
    rounds = {"fastgrad": 5, "reference": 1, "micrograd": 1}

    def __init__(self, n=1_000_000):
        rnd = random.Random(2)
        self.xs = [rnd.uniform(-1, 1) for _ in range(n)]

    def setup(self, engine):
        return engine, [engine.Value(x) for x in self.xs]

    def run(self, state):
        engine, leaves = state
        s = sum(leaves)
        s.backward()
        state[1].append(s)

    def result(self, state):
        engine, leaves = state
        return [engine.grad(leaves[0]), engine.grad(leaves[-2]), engine.data(leaves[-1])]


class LectureOp(Workload):
    """Ops added the lecture's way (a Python _backward per node): 1,000 chains of 10
    tanh(x * 1.5) steps, summed pairwise; backward (ns per node).

    Shows what a custom op costs in the compiled sweep, which calls back into Python.
    Shallow enough for micrograd's recursive backward."""
    name, unit, scale, counts = "lecture-op", "ns/node", 1e9, "reachable"
    rounds = {"fastgrad": 5, "reference": 3, "micrograd": 3}

    def __init__(self, chains=1000, depth=10):
        self.chains, self.depth = chains, depth

    def setup(self, engine):
        V = engine.Value
        tanh = lecture_unary(V, math.tanh, lambda t, x: 1 - t * t, "tanh")
        leaves = [V(0.001 * k) for k in range(self.chains)]
        level = []
        for x in leaves:
            y = x
            for _ in range(self.depth):
                y = tanh(y * 1.5)
            level.append(y)
        while len(level) > 1:
            level = [level[k] + level[k + 1] for k in range(0, len(level) - 1, 2)] + \
                (level[-1:] if len(level) % 2 else [])
        return engine, leaves + level

    def root(self, state):
        return state[1][-1]

    def run(self, state):
        self.root(state).backward()

    def result(self, state):
        return [state[0].grad(v) for v in state[1][:-1:97]]


class OpsNoGrad(Ops):
    """The ops program under no_grad (fastgrad.no_grad, torch.no_grad): values only, no
    graph recorded (ns per op; compare with the `ops` row)."""
    name = "ops-no-grad"

    def run(self, state):
        with state[0].no_grad():
            super().run(state)


def ext_program(n_steps=50_000, seed=3):
    """A seeded program of issue 7's ops on earlier nodes: (op, i, j) steps, each making a
    small expression around one new op whose operands keep every value finite."""
    rnd = random.Random(seed)
    return [(rnd.choice(["log", "sigmoid", "sqrt", "powv"]), rnd.randrange(N_LEAVES + k),
             rnd.randrange(N_LEAVES + k)) for k in range(n_steps)]


class ExtOps(Workload):
    """log, sigmoid, sqrt, abs and Value ** Value in a 50k-step program reusing earlier
    nodes, built and backpropagated (ns per node made)."""
    name, unit, scale, counts = "ext-ops", "ns/node", 1e9, "made"

    def __init__(self):
        rnd = random.Random(4)
        self.leaves = [rnd.uniform(-1, 1) for _ in range(N_LEAVES)]
        self.steps = ext_program()

    def setup(self, engine):
        return engine, [engine.Value(x) for x in self.leaves]

    def run(self, state):
        nodes = state[1]
        append = nodes.append
        for op, i, j in self.steps:
            x, y = nodes[i], nodes[j]
            if op == "log":
                append((abs(x) + 1.0).log())
            elif op == "sigmoid":
                append((x * y).sigmoid())
            elif op == "sqrt":
                append((x * x + 0.5).sqrt())
            else:
                append((abs(x) + 0.5) ** y.sigmoid())
        total = nodes[-1]
        for v in nodes[-64:-1]:
            total = total + v
        total.backward()

    def result(self, state):
        return [state[0].grad(v) for v in state[1][:N_LEAVES]]


class SoftmaxCrossEntropy(Workload):
    """functional.cross_entropy over 10 logits made from 4 inputs, forward and backward,
    for 200 samples (microseconds per sample)."""
    name, unit, scale = "softmax-ce", "us/sample", 1e6

    def __init__(self, samples=200):
        rnd = random.Random(5)
        self.per = samples              # (per sample, not per node)
        self.data = [([rnd.uniform(-3, 3) for _ in range(4)], rnd.randrange(10))
                     for _ in range(samples)]
        self.w = [[rnd.uniform(-1, 1) for _ in range(4)] for _ in range(10)]

    def setup(self, engine):
        return engine, [[engine.Value(x) for x in row] for row in self.w]

    def run(self, state):
        from fastgrad.functional import cross_entropy
        engine, w = state
        for xs, target in self.data:
            logits = [engine.Value._sum_of_products(engine.Value(0.0), row, xs) for row in w]
            cross_entropy(logits, target).backward()

    def result(self, state):
        return [state[0].grad(v) for row in state[1] for v in row]


# Which engine runs which workload: the one table (micrograd has none of the replay and
# extension ops; plain floats only compute forward passes; torch runs the workloads a
# tensor library has a like of).
RUNS = {
    "ops":              ("float", "fastgrad", "reference", "micrograd", "torch"),
    "backward":         ("fastgrad", "reference", "micrograd", "torch"),
    "mlp-step":         ("fastgrad", "reference", "micrograd", "torch"),
    "mlp-step-with-eval": ("fastgrad", "reference", "micrograd"),
    "mlp-backward":     ("fastgrad", "reference", "micrograd"),
    "mlp-eval-backward": ("fastgrad", "reference", "micrograd"),
    "mlp-replay":       ("fastgrad", "reference", "torch"),
    "mlp-replay-fused": ("fastgrad", "reference", "torch"),
    "ops-replay":       ("fastgrad", "reference"),
    "chain":            ("fastgrad", "reference", "micrograd"),
    "wide":             ("fastgrad", "reference", "micrograd"),
    "lecture-op":       ("fastgrad", "reference", "micrograd"),
    "ops-no-grad":      ("float", "fastgrad", "reference", "torch"),
    "ext-ops":          ("fastgrad", "reference", "torch"),
    "softmax-ce":       ("fastgrad", "reference"),
}

WORKLOADS = {w.name: w for w in (Ops, Backward, MlpStep, MlpStepWithEval, MlpBackward,
                                  MlpEvalBackward, MlpReplay, MlpReplayFused, OpsReplay,
                                  Chain, Wide, LectureOp, OpsNoGrad, ExtOps,
                                  SoftmaxCrossEntropy)}

_made = {}


def workload(name):
    """The workload called name, made once (their inputs are costly to draw)."""
    if name not in _made:
        _made[name] = WORKLOADS[name]()
    return _made[name]


def reference_result(w):
    """What the reference engine answers on workload w (the check for the others)."""
    key = ("reference-result", w.name)
    if key not in _made:
        state = w.setup(engines()["reference"])
        w.run(state)
        _made[key] = w.result(state)
    return _made[key]


# which workload exercises each op (tests/test_opcodes.py checks that every op has one)
COVERAGE = {
    Op.LEAF: "ops",
    Op.ADD: "ops",
    Op.MUL: "ops",
    Op.POW: "ops",
    Op.RELU: "ops",
    Op.TANH: "ops",
    Op.EXP: "ops",
    Op.CUSTOM: "lecture-op",
    Op.AFFINE: "mlp-replay-fused",
    Op.LOG: "ext-ops",
    Op.SIGMOID: "ext-ops",
    Op.SQRT: "ext-ops",
    Op.ABS: "ext-ops",
    Op.POWV: "ext-ops",
    Op.LOCAL: "softmax-ce",
}
