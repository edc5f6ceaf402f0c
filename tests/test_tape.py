"""The compiled arena's internals: growth, freeing, slot reuse, handles, the descending
pass and Kahn's, failure paths, cached orders, threads sharing one arena. (What holds on
either engine is in test_lifecycle.py.)"""
import bisect
import contextlib
import gc
import os
import random
import subprocess
import sys
import weakref

import pytest

from test_lifecycle import run_threads

core = pytest.importorskip("fastgrad._core")


def live():
    gc.collect()
    return core._tape_stats()["live"]


@pytest.fixture
def C():
    """The compiled Value (these tests look inside its arena)."""
    return core.Value


compiled = pytest.mark.compiled


def fresh(code, env=None):
    """Runs code in a new interpreter, whose tape is small, so that growing it is cheap
    (env: variables to set in it)."""
    out = subprocess.run([sys.executable, "-c", "from fastgrad._core import Value, _tape_stats, _test_fail_allocs\n" + code],
                         capture_output=True, text=True, timeout=120,
                         env=None if env is None else {**os.environ, **env})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


@compiled
def test_growth_past_capacity_keeps_values():
    fresh("""
start = _tape_stats()["capacity"]
xs = [Value(float(i)) for i in range(3 * start + 7)]
total = sum(xs)
assert _tape_stats()["capacity"] > start
total.backward()
assert total.data == sum(range(len(xs)))
assert all(x.grad == 1.0 for x in xs)
print("ok")
""")


# rss(): the resident memory of a fresh interpreter, in bytes
RSS = """
import resource
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()
"""
# glibc's malloc raises its mmap threshold as mmapped blocks are freed (up to 32 MiB), and
# a block under the threshold grows by copying, which makes its old contents resident
# again (the 1 MiB of op codes at 2**20 slots did, on Debian's CPython 3.14 and glibc
# 2.43). The tests that measure resident memory fix the threshold at glibc's default, so
# that the arena's arrays stay mmapped and grow in place whatever the interpreter freed
# before: what they measure is then the engine's own writes.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@compiled
@pytest.mark.unsanitized
def test_growth_does_not_touch_the_new_half():
    # A doubling reallocates every array, but only the slots handed out are written (the
    # passes' scratch is fresh pages that only a pass writes), not the whole new capacity
    # at once. Growing 2**20 -> 2**21 slots used to make ~5 MB resident on the spot.
    fresh(RSS + """
x = y = Value(1.0)
while _tape_stats()["capacity"] < 2**20:
    for _ in range(2**16):
        y = y + x                           # a chain: one node a step, one handle alive
for _ in range(_tape_stats()["capacity"] - _tape_stats()["size"] - 1):
    y = y + x                               # (a binary op reserves room for a constant)
cap = _tape_stats()["capacity"]
before = rss()
y = y + x                                   # the push that doubles the arena
assert _tape_stats()["capacity"] == 2 * cap
grown = rss() - before
assert grown < cap, f"{grown} bytes resident after growing from {cap} slots"
print("ok")
""", env=FIXED_MMAP)


@compiled
@pytest.mark.unsanitized
def test_a_graph_no_pass_reached_leaves_the_scratch_untouched():
    # The passes' scratch (parent counts, reached marks: 5 bytes a slot) lives on fresh
    # anonymous pages that only a pass writes. Building a 2**20-node chain writes value,
    # grad, lhs, rhs, refs, op, flags and the handle pointer of each node: 39 bytes (a
    # '*' or '+' never writes param). It used to write the scratch too, 44 a node.
    fresh(RSS + """
x = y = Value(1.0)
n = 2**20
before = rss()
for _ in range(n):
    y = y + x                               # one node a step, its handle dies
per_node = (rss() - before) / n
assert per_node < 41.5, f"{per_node:.1f} bytes resident per node"
y.backward()                                # and the passes work on those pages
assert x.grad == n + 1
print("ok")
""", env=FIXED_MMAP)


@compiled
def test_dropping_a_graph_returns_its_slots(C):
    base = live()
    a = C(1.0)
    y = a
    for _ in range(1000):
        y = (y * 1.0001 + 0.5).tanh()
    assert live() == base + 1 + 1000 * 5
    del y
    assert live() == base + 1
    del a
    assert live() == base


@compiled
def test_slots_are_reused(C):
    xs = [C(1.0) * 2.0 for _ in range(100)]
    size = core._tape_stats()["size"]
    del xs
    ys = [C(1.0) * 2.0 for _ in range(100)]
    assert core._tape_stats()["size"] == size       # came from the free list
    assert all(y.data == 2.0 for y in ys)


@compiled
def test_uninitialised_handle_raises(C):
    v = C.__new__(C)
    for read in (lambda: v.data, lambda: v.grad, lambda: v._prev, lambda: v.label,
                 v.backward, lambda: v + 1, lambda: v.relu(), lambda: C(1.0) * v):
        with pytest.raises(ValueError, match="never initialised"):
            read()
    del v                                          # and dies cleanly


@compiled
def test_init_twice_is_refused(C):
    v = C(1.0)
    with pytest.raises(TypeError):
        v.__init__(2.0)
    assert v.data == 1.0


@compiled
def test_spare_handles_are_reused_clean_by_either_api(C):
    # a dead handle is kept as a spare and comes back as a live handle of whichever API
    # asks next: untracked, with no node of its past and no _backward of its past
    G = core.GptValue
    a = C(2.0)
    out = C(4.0, (a,), 'sq')

    def _backward():
        a.grad += 2 * a.data * out.grad
    out._backward = _backward
    assert gc.is_tracked(out)
    rule = weakref.ref(_backward)
    ids = {id(out)} | {id(a * 1.0) for _ in range(10)}
    del out, _backward
    gc.collect()
    assert rule() is None                      # the spare does not keep the function
    g = G(3.0)
    made = [g * 2.0 for _ in range(20)] + [C(5.0) + 1.0 for _ in range(20)]
    assert ids & {id(v) for v in made}         # (spares were reused)
    for v in made[:20]:
        assert type(v) is G and v.data == 6.0 and v._children[0] is g
        assert not gc.is_tracked(v)
    for v in made[20:]:
        assert type(v) is C and v.data == 6.0 and v._op == '+'
        assert not gc.is_tracked(v) and v._backward == v._apply_rule
        v.backward()
        assert v.grad == 1.0


@contextlib.contextmanager
def spares_taken(C):
    """Holds live handles made by ops for the block, enough to have taken every spare (the
    engine keeps at most 1,024), so that the handles dying in the block are kept as
    spares."""
    a = C(0.0)
    hold = [a * 1.0 for _ in range(2048)]
    yield
    del hold


def spares_come_back_untracked(C, ids):
    """Makes 100 handles: some of them are the dead ones named by ids, come back as
    spares, and none is tracked (dealloc_handle asks the GC only about a handle that
    holds a function: a tracked spare would be reused still in the GC's lists)."""
    a = C(2.0)
    made = [a * 1.0 for _ in range(50)] + [C(1.0) for _ in range(50)]
    assert ids & {id(v) for v in made}
    assert not any(gc.is_tracked(v) for v in made)


@compiled
def test_a_handle_cleared_by_the_gc_comes_back_untracked(C):
    # out -> method-wrapper -> tuple -> out: neither a method-wrapper nor a tuple can be
    # cleared, so the GC breaks the cycle at the handle, whose tp_clear must untrack it
    with spares_taken(C):
        out = C(2.0) * 3.0
        t = (out,)
        out._backward = t.__len__
        assert gc.is_tracked(out)
        ids = {id(out)}
        del out, t
        assert gc.collect() >= 3
        spares_come_back_untracked(C, ids)


@compiled
def test_handles_made_without_a_node_are_untracked(C):
    # Value.__new__ and _Handle() go through Cython's tp_new alone, which tracks
    with spares_taken(C):
        handles = [C.__new__(C) for _ in range(20)] + [core._Handle() for _ in range(20)]
        assert not any(gc.is_tracked(h) for h in handles)
        ids = {id(h) for h in handles}
        del handles
        spares_come_back_untracked(C, ids)


@compiled
def test_a_restored_rule_untracks_the_handle(C):
    with spares_taken(C):
        v = C(2.0) * 3.0
        v._backward = lambda: None
        assert gc.is_tracked(v)
        v._backward = v._apply_rule
        assert not gc.is_tracked(v)
        ids = {id(v)}
        del v
        spares_come_back_untracked(C, ids)


@compiled
def test_a_python_subclass_of_the_handle_is_freed_as_its_own():
    # only the engine's own handle types become spares: an instance of a Python subclass
    # (with a dict) is freed by its type, which keeps its own reference count
    fresh("""
import gc, sys
from fastgrad._core import _Handle
class Sub(_Handle):
    pass
before = sys.getrefcount(Sub)
for _ in range(3000):
    s = Sub()
    s.note = [1, 2]
    del s
gc.collect()
assert sys.getrefcount(Sub) == before, (before, sys.getrefcount(Sub))
xs = [Value(float(k)) * 2.0 for k in range(3000)]
assert [v.data for v in xs] == [2.0 * k for k in range(3000)]
print("ok")
""")


def test_a_python_subclass_of_the_handle_writes_through_its_own_attributes():
    # the handle types' fast write of data and grad is for the engine's own types: a
    # subclass that defines them (or adds others) is written the generic way
    class Sub(core._Handle):
        seen = []

        @property
        def data(self):
            return "own"

        @data.setter
        def data(self, x):
            Sub.seen.append(x)
    s = Sub()
    s.data = 2.5
    s.note = "kept"
    assert (Sub.seen, s.data, s.note) == ([2.5], "own", "kept")


@compiled
def test_a_full_arena_places_a_node_below_its_child_rather_than_past_its_end():
    # reserve() counts the free slots as room; in a full arena with every free slot below
    # a node's children, the node takes one of them (before, it was written one past the
    # arrays' end: a heap overflow that corrupted the interpreter a while later)
    fresh("""
from fastgrad._core import _tape_stats, _test_descends, _test_free_slots, _test_slot
hold = [Value(0.5)]                # (the arena is allocated with the first node)
while _tape_stats()["size"] < _tape_stats()["capacity"]:
    hold.append(Value(0.5))
del hold[:10]
top = hold[-1]
assert _test_slot(top) == _tape_stats()["capacity"] - 1
y = top * 2.0 + top
st = _tape_stats()
assert st["size"] == st["capacity"] and _test_slot(y) < _test_slot(top), st
assert not _test_descends(y)
_test_free_slots()
y.backward()
assert (y.data, top.grad) == (1.5, 3.0)
print("ok")
""")


@compiled
def test_a_graph_dying_during_a_raise_keeps_the_exception(C):
    # freeing a graph can run Python code (a pinned handle's _backward dies with its
    # closure, and a label with it); the exception on its way out is kept aside meanwhile
    freed = []

    class Label(str):
        def __del__(self):
            try:                               # Python code that raises and catches
                {}["missing"]
            except KeyError:
                freed.append(str(self))

    def fail():
        a = C(1.0, label=Label("a"))
        out = C(2.0, (a,), 'custom', label=Label("out"))
        out._backward = lambda: freed.append(out)
        y = out * a                            # out is pinned by y
        del out
        raise LookupError("kept")

    with pytest.raises(LookupError, match="kept"):
        fail()
    gc.collect()
    assert sorted(f for f in freed if isinstance(f, str)) == ["a", "out"]


GROWTH_FAILURE = """
import gc
C = Value
a = C(2.0)
y = a * 3.0
gc.collect()
base = _tape_stats()["live"]
st = _tape_stats()
n = st["free"] + st["capacity"] - st["size"] + 1      # new nodes that force a growth
_test_fail_allocs({fail_after})
keep = []
try:
    for _ in range(n):
        keep.append(C(1.0) + 1.0)
    raise SystemExit("no MemoryError")
except MemoryError:
    pass
finally:
    _test_fail_allocs(-1)
assert _tape_stats()["live"] == base + 3 * len(keep)   # each kept sum: two leaves and a '+'
del keep
y.backward()
assert (y.data, a.grad) == (6.0, 3.0)
z = [C(float(i)) for i in range(2 * n)]               # growth works again
assert [v.data for v in z] == list(range(2 * n))
print("ok")
"""


# grow() reallocates nine arrays and the free-slot tree's six levels, then maps the
# passes' two scratch arrays (allocations 15 and 16)
@compiled
@pytest.mark.parametrize("fail_after", [0, 3, 6, 9, 15, 16])
def test_failed_growth_raises_memoryerror_and_keeps_the_graph(fail_after):
    fresh(GROWTH_FAILURE.format(fail_after=fail_after))


def on_top(C, x):
    """A new leaf in a slot above every free slot, with some free slots left below it (the
    nodes made next could land below it, and do not)."""
    drain = [C(0.0) for _ in range(core._tape_stats()["free"] + 8)]
    v = C(x)
    del drain
    return v


@contextlib.contextmanager
def kahns(C):
    """While open, every backward() orders its graph with Kahn's algorithm: a node with an
    assigned _backward anywhere takes all graphs off the descending pass, and one with no
    Python rule under its root is then swept by kahn_sweep."""
    other = C(0.0) * 1.0
    other._backward = lambda: None
    try:
        yield
    finally:
        del other


def fresh_slots(C):
    """Holds every free slot, so that the nodes made next go to fresh slots at the top, in
    creation order (the caller keeps the returned list alive meanwhile)."""
    return [C(0.0) for _ in range(core._tape_stats()["free"])]


@compiled
def test_the_sweep_does_not_decide_the_result(C):
    # the one pass down the slots and Kahn's algorithm give micrograd's grads, first and
    # again from the cached order
    from micrograd.engine import Value as M

    def expr(V, a, b):
        c = a * b + a
        d = (c ** 2).relu() + c.relu() * b ** 3 - 1 / c
        return d * c + a

    hold = fresh_slots(C)
    a1, b1 = C(0.7), C(-1.3)
    y1 = expr(C, a1, b1)
    a2, b2 = C(0.7), C(-1.3)
    y2 = expr(C, a2, b2)
    ma, mb = M(0.7), M(-1.3)
    my = expr(M, ma, mb)
    assert core._test_descends(y1) and core._test_descends(y2)
    y1.backward()
    y1.backward()                               # again, from the cached order
    with kahns(C):
        y2.backward()
        y2.backward()
    my.backward()
    my.backward()
    for a, b in ((a1, b1), (a2, b2)):
        assert (a.grad, b.grad) == (pytest.approx(ma.grad, rel=1e-12), pytest.approx(mb.grad, rel=1e-12))
    # a node with a Python _backward anywhere under it: the general sweep
    z = C(y1.data, (y1,), 'id')
    assert not core._test_descends(z)
    assert core._test_scratch_clear()
    del hold


@compiled
def test_a_node_lands_above_its_children_when_free_slots_lie_below_them(C):
    # free slots below a node's children are passed over: it takes the lowest free slot
    # above its highest child (or a fresh one), so the graph descends. (With the lowest
    # free slot whatever the children, these nodes landed below a and b.)
    hold = fresh_slots(C)
    below = [C(0.0) for _ in range(40)]
    a, b = C(0.7), C(-1.3)
    above = [C(0.0) for _ in range(3)]
    del below[::3], above[1]                    # free slots below a and b, one above
    y = (a * b + a).relu() * b
    slots = [core._test_slot(v) for v in (a, b, y)]
    assert core._test_descends(y) and slots[2] > max(slots[:2])
    del above[0]                                # (a free slot just above b again)
    free = core._test_free_slots()
    c = a * b                                   # takes it, not a lower one
    assert core._test_slot(c) == min(f for f in free if f > core._test_slot(b))
    leaf = C(2.0)                               # a leaf still takes the lowest free slot
    assert core._test_slot(leaf) == min(core._test_free_slots() + [core._test_slot(leaf)])
    assert core._test_slot(leaf) < core._test_slot(a)
    core._test_free_slots()                     # (checks the bitmaps against the flags)
    del hold


@compiled
@pytest.mark.parametrize("seed", range(2))
def test_the_free_slot_search_agrees_with_a_list_of_the_free_slots(C, seed):
    # The lowest free slot above a child, found through every level of the free-slot
    # tree: 300k slots (64**3 is 262,144) with a few scattered free ones, holes below the
    # children among them; each new node checked against a plain sorted list of the free
    # slots, and the whole tree against the FREE flags at the end.
    rnd = random.Random(seed)
    held = fresh_slots(C)                   # (the free slots other tests left are taken)
    hold = [C(float(k)) for k in range(300_000)]
    slots = [core._test_slot(v) for v in hold]
    for k in rnd.sample(range(len(hold)), 60) + [0, 1, 64, 4095, 4096, 262_143, 262_144]:
        hold[k] = None
    free = core._test_free_slots()
    top = max(slots)
    made = []
    for step in range(400):
        if step % 5 == 0:                   # a leaf: the lowest free slot
            made.append(C(0.5))
            expected = free[0] if free else None
        else:                               # over a child: the lowest free slot above it
            k = rnd.randrange(len(hold))
            while hold[k] is None:
                k = rnd.randrange(len(hold))
            made.append(hold[k].relu())
            above = bisect.bisect_right(free, slots[k])
            expected = free[above] if above < len(free) else None
        got = core._test_slot(made[len(made) - 1])
        if expected is None:
            assert got > top                # a fresh slot
        else:
            assert got == expected
            free.remove(got)
    assert core._test_free_slots() == free
    del hold, made, held


@compiled
def test_a_graph_built_after_another_died_descends():
    # a graph built in the slots a dead graph freed lands in them lowest first, in the
    # order it is made, and gets the one-pass backward
    fresh("""
import random
from fastgrad import nn
from fastgrad._core import _test_descends
from fastgrad.demo import step
random.seed(1)
model = nn.MLP(2, [16, 16, 1])
X = [(random.uniform(-1, 1), random.uniform(-1, 1)) for _ in range(100)]
y = [1 if a * b > 0 else -1 for a, b in X]
for k in range(3):
    step(model, X, y, k)
del model
nodes = [Value(random.uniform(-1, 1)) for _ in range(64)]
for _ in range(100000):
    a, b = random.choice(nodes), random.choice(nodes)
    nodes.append((a * b).tanh() + a)
assert _test_descends(nodes[-1])
print("ok")
""")


@compiled
def test_the_training_graph_descends_after_an_evaluation_graph_died():
    # the "print the accuracy" loop: an evaluation graph built and dropped before each
    # training step. Lowest-free-first slots put the training graph in the freed slots in
    # the order it is made, so each step gets the one-pass backward (with a free list that
    # hands slots out in the order they died, only the first step did)
    fresh("""
import random
from fastgrad import demo, nn
from fastgrad._core import _test_descends
from fastgrad.datasets import make_moons
random.seed(1337)
model = nn.using(Value).MLP(2, [16, 16, 1])
X, y = make_moons(100, 0.1, seed=1337)
descends = []
for k in range(6):
    scores = [model([Value(a), Value(b)]) for a, b in X[:30]]
    accuracy = sum((s.data > 0) == (t > 0) for s, t in zip(scores, y)) / 30
    del scores
    loss, _ = demo.build(model, X, y, Value=Value)
    descends.append(_test_descends(loss))
    model.zero_grad()
    loss.backward()
    for p in model.parameters():
        p.data -= 0.1 * p.grad
    del loss
assert descends == [True] * 6, descends
print("ok")
""")


def sparse_graph(C, descending=True):
    """A small graph whose leaves lie far below it in the arena (100,000 live nodes in
    between: more unreached words of 8 slots than its skip budget allows): the descending
    pass hands it over to Kahn's algorithm partway. Nodes under the handover point name
    each other (q under r, p0 under both), and one is fused. With descending=False, the
    same graph with its leaves on top of the free slots."""
    hold = fresh_slots(C)
    p = [C(0.5 + 0.1 * k) if descending else on_top(C, 0.5 + 0.1 * k) for k in range(4)]
    q = p[0] * p[1]
    r = q + p[0]
    s = C._affine(p[2], [p[3], q], [r, 1.5])
    gap = [C(1.0) for _ in range(100_000)]
    top = p[3]
    for _ in range(50):
        top = (top * r + q * s).relu() * 0.5 + p[0]
    return hold, gap, p, top


def sparse_graph_grads(M):
    """micrograd's grads of sparse_graph's leaves (the fused node spelled out)."""
    p = [M(0.5 + 0.1 * k) for k in range(4)]
    q = p[0] * p[1]
    r = q + p[0]
    s = p[2] + p[3] * r + q * 1.5
    top = p[3]
    for _ in range(50):
        top = (top * r + q * s).relu() * 0.5 + p[0]
    top.backward()
    return [v.grad for v in p]


@compiled
def test_descending_pass_hands_a_sparse_graph_to_kahn(C):
    from micrograd.engine import Value as M
    expected = sparse_graph_grads(M)
    hold, gap, p, top = sparse_graph(C)
    assert core._test_descends(top)
    handed = core._test_hand_overs()
    top.backward()
    assert core._test_hand_overs() == handed + 1
    assert [v.grad for v in p] == [pytest.approx(g, rel=1e-12) for g in expected]
    assert core._test_scratch_clear()
    # again from the cached order (the swept nodes, then Kahn's): as Kahn's algorithm
    # does it, intermediate grads accumulating (a fused node's differ from micrograd's here)
    _, _, p2, top2 = sparse_graph(C, descending=False)
    assert core._test_descends(top2)
    with kahns(C):
        top2.backward()
    for v in p + p2:
        v.grad = 0.0
    top.backward()
    with kahns(C):
        top2.backward()
    assert [v.grad for v in p] == [pytest.approx(v.grad, rel=1e-12) for v in p2]


def gapped_chain(V, gap=None):
    """A chain of ~3,500 nodes, then (with gap) 20,000 live leaves made after them, then
    ~350 more nodes on the chain: the graph's top lies above a gap, as a graph built
    beside another live one does (microgpt's loop keeps a step's graph while the next is
    built)."""
    x = V(0.5)
    y = x
    for k in range(1000):
        y = y * 0.999 + x if k % 2 else (y * y + 0.25).tanh()
    hold = gap(V) if gap else None
    for k in range(100):
        y = y * 0.999 + x if k % 2 else (y * y + 0.25).tanh()
    return hold, x, y


@compiled
def test_descending_pass_crosses_a_gap_of_unreached_words_without_handing_over(C):
    # the pass skips an aligned word of 8 unreached slots at once and its budget counts
    # the word once: the 20,000 slots of the gap are 2,500 words, within the 4,096 + 8
    # per node swept that the ~350 nodes above it allow (counted slot by slot, they were
    # not, and the pass handed the graph over to Kahn's algorithm). The reference engine
    # is the oracle: the chain is too deep for micrograd's recursion.
    from fastgrad.reference import Value as R
    _, mx, my = gapped_chain(R)
    my.backward()
    hold = fresh_slots(C)
    gap, x, y = gapped_chain(C, gap=lambda V: [V(1.0) for _ in range(20_000)])
    assert core._test_descends(y)
    handed = core._test_hand_overs()
    y.backward()
    assert core._test_hand_overs() == handed
    assert x.grad == pytest.approx(mx.grad, rel=1e-12)
    assert core._test_scratch_clear()


@compiled
@pytest.mark.parametrize("fail_after", range(6))
def test_descending_pass_never_fails_for_memory(C, fail_after):
    # its allocations (the order it records, the handover's lists) are optional: when one
    # fails the pass goes on without it, so backward() still completes and is exact
    from micrograd.engine import Value as M
    expected = sparse_graph_grads(M)
    hold, gap, p, top = sparse_graph(C)
    core._test_fail_allocs(fail_after)
    try:
        top.backward()
    finally:
        core._test_fail_allocs(-1)
    assert [v.grad for v in p] == [pytest.approx(g, rel=1e-12) for g in expected]
    assert core._test_scratch_clear()


@compiled
def test_failed_ordering_allocation_leaves_no_counts(C):
    a = C(1.0)
    y = a
    for _ in range(500):
        y = y * 1.0 + a
    with kahns(C):                     # Kahn's algorithm, whose lists must be allocated
        core._test_fail_allocs(3)
        try:
            with pytest.raises(MemoryError):
                y.backward()
        finally:
            core._test_fail_allocs(-1)
        assert core._test_scratch_clear()
        y.backward()                   # a stale parent count would cut the sweep short
    assert a.grad == 501.0


@compiled
def test_failed_allocation_in_constructor(C):
    a, b, c = C(1.0), C(2.0), C(3.0)
    base = live()
    core._test_fail_allocs(0)
    try:
        with pytest.raises(MemoryError):
            C(6.0, (a, b, c), 'three')            # the child list cannot be allocated
    finally:
        core._test_fail_allocs(-1)
    assert live() == base


@compiled
def test_custom_backward_growing_the_arena_under_the_sweep():
    fresh("""
cap = _tape_stats()["capacity"]
a = Value(0.5)
made = []
out = Value(a.data * 2, (a,), 'double')

def _backward():
    # builds enough nodes to reallocate every tape array in the middle of the sweep
    made.append([Value(1.0) for _ in range(cap + 1)])
    a.grad += 2 * out.grad
out._backward = _backward
y = (out * 3.0 + a).tanh()
y.backward()
assert _tape_stats()["capacity"] > cap
dy = 1 - y.data ** 2
assert abs(a.grad - dy * (3.0 * 2 + 1)) < 1e-12
assert sum(v.data for v in made[0]) == cap + 1
print("ok")
""")


@compiled
def test_custom_node_keeps_its_backward_without_a_handle(C):
    base = live()
    a = C(3.0)

    def square(v):
        out = C(v.data ** 2, (v,), 'sq')

        def _backward():
            v.grad += 2 * v.data * out.grad
        out._backward = _backward
        return out
    y = square(a) + 1.0                  # the 'sq' handle is dropped here
    gc.collect()
    y.backward()
    assert a.grad == 6.0
    (sq,) = [v for v in y._prev if v._op == 'sq']
    assert sq._op == 'sq' and sq.grad == 1.0
    del y, sq
    assert live() == base + 1            # the closure cycle was collected with the node
    del a
    assert live() == base


@compiled
def test_exception_in_custom_backward_reaches_the_caller(C):
    a = C(1.0)
    out = C(2.0, (a,), 'boom')

    def _backward():
        raise RuntimeError("boom")
    out._backward = _backward
    y = out * a
    with pytest.raises(RuntimeError, match="boom"):
        y.backward()
    z = a * 4.0                          # the arena is usable, marks are clear
    z.backward()
    assert z.grad == 1.0 and a.grad == 2.0 + 4.0


@compiled
def test_free_threaded_python_runs_fastgrad_with_the_gil():
    # fastgrad does not declare itself free-threading compatible: the arena relies on the
    # GIL, which a free-threaded CPython turns back on when the module is imported
    import sysconfig
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        pytest.skip("this CPython is not a free-threaded build")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c",
                          "import sys, fastgrad._core; print(sys._is_gil_enabled())"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stdout + out.stderr


@compiled
def test_threads_free_and_build_in_one_arena(C):
    # one thread drops whole graphs (freeing slots, re-sorting the free list) while others
    # build in the slots it frees and backpropagate
    def work(k):
        rnd = random.Random(k)
        sums = []
        for step in range(60):
            xs = [C(rnd.uniform(-1, 1)) for _ in range(50)]
            y = C._sum_of_products(xs[0], xs[1:25], xs[25:])
            y = (y.tanh() * xs[3]) ** 2
            y.backward()
            sums.append((y.data, xs[7].grad))
            if k == 0 and step % 10 == 0:
                gc.collect()
        return sums

    alone = {k: work(k) for k in range(3)}
    assert run_threads(work, 3) == alone
    assert core._test_scratch_clear()


@compiled
def test_cached_order_is_reused_and_dropped_with_its_root(C):
    from fastgrad.reference import Value as R
    base = core._tape_stats()["cached"]
    a, b = C(1.5), C(-2.0)
    y = (a * b + a).tanh() * b
    ra, rb = R(1.5), R(-2.0)
    ry = (ra * rb + ra).tanh() * rb
    y.backward()
    ry.backward()
    cached = core._tape_stats()["cached"]
    assert cached > base                      # the first backward cached y's order
    y.backward()                              # the second one sweeps that order again
    ry.backward()
    assert core._tape_stats()["cached"] == cached
    assert (a.grad, b.grad) == (pytest.approx(ra.grad, rel=1e-12), pytest.approx(rb.grad, rel=1e-12))
    del y
    assert core._tape_stats()["cached"] == base


@compiled
def test_cached_orders_are_bounded(C):
    # backward from every node of a chain would cache O(n^2) slots; the budget stops that
    base = core._tape_stats()["cached"]
    x = C(1.0)
    chain = [x]
    for _ in range(3000):
        chain.append(chain[-1] * 1.0001)
    for v in chain:
        v.backward()
    st = core._tape_stats()
    assert st["cached"] - base <= max(2 * st["live"], 2 ** 20)
    for v in chain:
        v.grad = 0.0
    chain[-1].backward()
    assert x.grad == pytest.approx(1.0001 ** 3000, rel=1e-12)
    del chain, v, x
    assert core._tape_stats()["cached"] == base


@compiled
def test_sum_of_products_failures_make_no_nodes(C):
    b, ws = C(1.0), [C(2.0), C(3.0)]
    base = live()
    with pytest.raises(OverflowError):
        C._sum_of_products(b, ws, [1.0, 10 ** 400])
    assert live() == base
    core._test_fail_allocs(0)
    try:
        with pytest.raises(MemoryError):
            C._sum_of_products(b, ws, [1.0, 2.0])
    finally:
        core._test_fail_allocs(-1)
    assert live() == base
    with pytest.raises(ValueError, match="never initialised"):
        C._sum_of_products(b, [C(1.0), C.__new__(C)], [1.0, 2.0])
    assert live() == base
    assert C._sum_of_products(b, ws, [1.0, 2.0]).data == 1.0 + 2.0 + 6.0


EXHAUSTION = """
import resource
from fastgrad._core import Value, _tape_stats
a = Value(2.0)
y = a * 3.0
keep = []
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))    # as `ulimit -v` does
try:
    while True:                                  # grow the tape until allocation fails
        keep.append(Value(1.0) * 2.0)
except MemoryError:
    pass
n = len(keep)
del keep
y.backward()                                     # the existing graph is intact
assert (y.data, a.grad) == (6.0, 3.0)
z = sum(Value(float(i)) for i in range(1000))    # and the process goes on
assert z.data == 499500.0
print("ok", n)
"""


@pytest.mark.unsanitized
@compiled
def test_running_out_of_memory_raises_and_keeps_the_graph():
    # a fresh interpreter under an address-space limit a little above what it needs now
    limit = 600 * 1024 * 1024
    out = subprocess.run([sys.executable, "-c", EXHAUSTION.format(limit=limit)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr
    assert int(out.stdout.split()[1]) > 1000      # it did build a good deal first


@compiled
def test_free_slots_are_size_minus_live(C):
    # reserve() counts on it: a free slot is reused before the tape grows
    random.seed(5)
    keep = []
    for step in range(3000):
        keep.append((C(random.random()) * 2.0 + 1.0).tanh())
        if step % 7 == 0:
            del keep[random.randrange(len(keep))]
        if step % 500 == 0:
            keep = keep[::2]
    gc.collect()
    st = core._tape_stats()
    assert len(core._test_free_slots()) == st["size"] - st["live"]
    del keep
    gc.collect()
    st = core._tape_stats()
    assert len(core._test_free_slots()) == st["size"] - st["live"]


@compiled
@pytest.mark.parametrize("seed", range(3))
def test_a_new_node_takes_the_lowest_free_slot(C, seed):
    # whatever order slots were freed in, new nodes fill them lowest first, then go on at
    # the top of the tape; no sort runs (none would between these frees)
    rnd = random.Random(seed)
    hold = [C(float(k)) for k in range(5000)]
    dead = rnd.sample(range(len(hold)), 700)
    for k in dead:                      # freed in random order
        hold[k] = None
    free = core._test_free_slots()
    assert len(free) >= 700
    made = [C(1.0) for _ in range(len(free) + 3)]
    slots = [core._test_slot(v) for v in made]
    assert slots[:len(free)] == sorted(free)
    assert slots[len(free):] == sorted(slots[len(free):]) and slots[len(free)] > max(free)
    assert core._test_free_slots() == []