"""What `make check-memory` runs under valgrind: the engine's awkward paths, briefly.

Training steps, custom ops (pinning and their GC cycles), the arena growing under a sweep,
an exception out of a custom _backward, labels and handles re-made through _prev,
pickling, injected allocation failures, a deep chain freed iteratively, a bare handle,
a descending pass handed over to Kahn's algorithm, the ops beyond micrograd, no_grad,
replays, microgpt's Value and the fused layers (with allocation failures inside them).
"""
import gc, pickle, random
from fastgrad._core import Value, _tape_stats, _test_fail_allocs
from fastgrad import nn
random.seed(0)
m = nn.MLP(2, [4, 4, 1])
for k in range(3):
    xs = [[random.uniform(-1,1), random.uniform(-1,1)] for _ in range(4)]
    loss = sum(((1 + -1.0 * m(x)).relu() for x in xs), Value(0.0)) * 0.25
    m.zero_grad(); loss.backward()
    for p in m.parameters(): p.data -= 0.1 * p.grad
# custom ops, pinning, GC
a = Value(0.5)
def sq(v):
    out = Value(v.data ** 2, (v,), 'sq')
    def _backward(): v.grad += 2 * v.data * out.grad
    out._backward = _backward
    return out
y = sq(a) + sq(a * 2.0) ; y.backward(); del y; gc.collect()
# arena growth under sweep
out = Value(1.0, (a,), 'grow')
made = []
def gb():
    made.append([Value(1.0) for _ in range(3000)])
    a.grad += out.grad
out._backward = gb
z = (out * 3.0).tanh(); z.backward(); del z, out, made; gc.collect()
# exceptions in custom backward
b = Value(1.0); o = Value(2.0, (b,), 'boom')
def boom(): raise RuntimeError
o._backward = boom
try: (o * b).backward()
except RuntimeError: pass
# labels, _prev re-made handles, pickling
c = Value(1.0, label='c'); d = c * 2.0; del c
[h.label for h in d._prev]; pickle.loads(pickle.dumps(Value(3.0, label='x')))
# failures
_test_fail_allocs(0)
try: Value(1.0, (a, b, a), 'x')
except MemoryError: pass
_test_fail_allocs(-1)
# chain and free
x = Value(1.0); y = x
for _ in range(20000): y = y * 1.0001 + 0.5
y.backward(); del y; gc.collect()
v = Value.__new__(Value); del v
print(_tape_stats())
# a graph that descends the slots, swept in one pass, handed over to Kahn's algorithm
# when its leaves lie far below it, with and without memory for the handover
for fail in (-1, 0, 1, 2):
    hold = [Value(0.0) for _ in range(_tape_stats()["free"])]
    p = [Value(0.5 + 0.1 * k) for k in range(3)]
    q = p[0] * p[1]
    s = Value._affine(p[2], [q, p[0]], [p[1], 2.0])
    gap = [Value(1.0) for _ in range(6000)]
    top = q
    for _ in range(20):
        top = (top * s + q).relu() * 0.5 + p[0]
    _test_fail_allocs(fail)
    top.backward()
    _test_fail_allocs(-1)
    top.backward()
    del hold, p, q, s, gap, top
# issue 7's ops, recomputed and failing halfway (all or nothing), and no_grad
import fastgrad
u, w = Value(1.5), Value(0.5)
y = (u.log() + u.sigmoid() + u.sqrt() + abs(-u)) * u ** w + 2 ** w
y.backward(); y.recompute(); y.backward()
u.data = -1.0
try: y.recompute()
except ValueError: pass
with fastgrad.no_grad():
    z = (u * w).tanh() + Value._sum_of_products(u, [w], [2.0])
del y, z
# replays recomputed by their run loops (micrograd's node-per-op MLP: ADD's and MUL's
# own) and, above PREFETCH_STEPS, by the prefetching loop, failing halfway up a log
m = nn.MLP(2, [8, 8, 1])
loss = sum(((1 + -1.0 * m(x)).relu() for x in xs), Value(0.0))
loss.backward(); loss.recompute(); loss.backward()
chain = [Value(2.0)]
for half in range(2):
    for _ in range(33_000):
        chain.append(chain[-1] * 1.0001 + 0.5)
    if half == 0:
        chain.append(chain[-1].log())
chain[-1].backward(); chain[-1].recompute()
chain[0].data = -1e6
try: chain[-1].recompute()
except ValueError: pass
del loss, m, chain
# replays: a fused model's (affine steps, windows of regrouped steps), the backward that
# sweeps recorded derivatives, one made stale, and building a replay without memory
f = nn.MLP(2, [8, 8, 1], fused=True)
loss = sum(((1 + -1.0 * f(x)).relu() for x in xs), Value(0.0))
loss.backward(); loss.recompute(); loss.backward()
f.parameters()[0].data = 0.25
loss.backward()
for fail in (0, 1, 2):
    side = f(xs[0]) * 2.0
    _test_fail_allocs(fail)
    try: side.recompute()
    except MemoryError: pass
    _test_fail_allocs(-1)
    side.recompute(); side.backward()
del loss, side
# microgpt's API and the fused layers: LOCAL nodes made, swept, freed, and calls that fail
# halfway for memory (nothing half-built may remain)
from fastgrad import functional as F
from fastgrad._core import GptValue
for V in (Value, GptValue):
    x = [V(0.1 * k - 0.3) for k in range(6)]
    w = [[V(0.05 * (j - k)) for j in range(6)] for k in range(4)]
    h = F.rmsnorm(F.linear(x, w) + [0.5, V(1.0)][1:])
    h = (h[:1] + F.linear(h + x[:1], F.matrix(w[:2]), x[4:], relu=True) +   # (ReLU and
         F.linear(h[:3] + x[3:], w, x[2:], relu=True)[:2])                # bias rows: 5)
    head = F.matrix([[V(0.2 + 0.1 * k) for k in range(5)] for _ in range(3)])
    logits = F.linear([e.relu() for e in h], head)      # (the chunk holds the Matrix)
    del head
    keys = [F.linear(x, w)[::-1] for _ in range(3)]
    att = F.attention(h[:4], keys, [k[::-1] for k in keys], 2)
    del keys                                # (the rows hold the keys and values)
    loss = F.cross_entropy(logits, 1) + sum(F.softmax(logits)) * 0.1 + sum(att) * 0.5
    del att
    loss.backward()
    for fail in range(12):
        _test_fail_allocs(fail)
        for f in (lambda: F.linear([2.0] + x[1:], w), lambda: F.rmsnorm(x),
                  lambda: F.softmax(x), lambda: F.cross_entropy(x, 0),
                  lambda: F.linear(x, F.matrix(w)), lambda: F.attention(x, w, w[::-1], 3),
                  lambda: F.linear([2.0] + x[1:], w, x[:4], relu=True),
                  lambda: F.linear(x, F.matrix(w), h[:4])):
            try: f()
            except MemoryError: pass
        _test_fail_allocs(-1)
    del x, w, h, logits, loss
g = GptValue(2.0); q = GptValue(g.data ** 3, (g, g), (6.0, 6.0)) * g
q.backward(); q._children[0]._local_grads; del g, q
gc.collect()
print(_tape_stats())
