"""Issue 7's additions on both engines: softmax and cross-entropy, graph pictures,
gradcheck, no_grad and the demo. (The new ops themselves are in test_ops.py.)"""
import contextlib
import inspect
import math
import re
import shutil
import sys
import threading
import xml.etree.ElementTree as ET

import pytest

import fastgrad
from fastgrad import functional as F
from fastgrad import viz
from fastgrad._engine import env_flag


def finite_difference(f, xs, i, eps=1e-6):
    up = list(xs); up[i] += eps
    down = list(xs); down[i] -= eps
    return (f(up) - f(down)) / (2 * eps)


def softmax_floats(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def ce_floats(xs, t):
    m = max(xs)
    return math.log(sum(math.exp(x - m) for x in xs)) + m - xs[t]


LOGITS = [0.5, -1.25, 2.0, 0.0]


def test_softmax_closed_form_and_gradients(Value):
    xs = [Value(x) for x in LOGITS]
    probs = F.softmax(xs)
    assert [p.data for p in probs] == [pytest.approx(p, rel=1e-12) for p in softmax_floats(LOGITS)]
    assert sum(p.data for p in probs) == pytest.approx(1.0, rel=1e-12)
    probs[2].backward()
    for i, x in enumerate(xs):
        fd = finite_difference(lambda v: softmax_floats(v)[2], LOGITS, i)
        assert x.grad == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("target", [0, 2, -1])
def test_cross_entropy_closed_form_and_gradients(Value, target):
    xs = [Value(x) for x in LOGITS]
    loss = F.cross_entropy(xs, target)
    loss.backward()
    assert loss.data == pytest.approx(ce_floats(LOGITS, target), rel=1e-12)
    p = softmax_floats(LOGITS)
    for i, x in enumerate(xs):                  # d CE / d x_i = p_i - [i == target]
        assert x.grad == pytest.approx(p[i] - (i == target % len(xs)), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("scale", [1000.0, -1000.0])
def test_softmax_and_cross_entropy_are_stable(Value, scale):
    xs = [Value(scale), Value(0.0), Value(-scale)]
    probs = F.softmax(xs)
    assert all(math.isfinite(p.data) for p in probs)
    loss = F.cross_entropy(xs, 1)
    loss.backward()
    assert math.isfinite(loss.data) and loss.data == pytest.approx(abs(scale), rel=1e-12)
    assert all(math.isfinite(x.grad) for x in xs)
    s = Value(scale).sigmoid()
    s.backward()
    assert s.data in (0.0, 1.0)


def test_functional_against_torch(Value):
    torch = pytest.importorskip("torch")
    xs = [Value(x) for x in LOGITS]
    F.cross_entropy(xs, 1).backward()
    t = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(t.unsqueeze(0), torch.tensor([1]))
    tl.backward()
    assert [x.grad for x in xs] == [pytest.approx(g, rel=1e-12, abs=1e-15) for g in t.grad.tolist()]


def test_functional_bad_input(Value):
    with pytest.raises(ValueError):
        F.softmax([])
    with pytest.raises(TypeError):
        F.softmax([1.0, 2.0])
    with pytest.raises(IndexError):
        F.cross_entropy([Value(1.0)], 3)
    with pytest.raises(TypeError):
        F.cross_entropy([Value(1.0)], 0.0)


def lecture_graph(Value):
    # the blog's first expression, labels included
    a = Value(2.0, label='a')
    b = Value(-3.0, label='b')
    c = Value(10.0, label='c')
    e = a * b; e.label = 'e'
    d = e + c; d.label = 'd'
    f = Value(-2.0, label='f')
    L = d * f; L.label = 'L'
    L.backward()
    return L


def test_trace(Value):
    L = lecture_graph(Value)
    nodes, edges = viz.trace(L)
    assert sorted(n.label for n in nodes) == ['L', 'a', 'b', 'c', 'd', 'e', 'f']
    assert sorted((c.label, p.label) for c, p in edges) == [
        ('a', 'e'), ('b', 'e'), ('c', 'd'), ('d', 'L'), ('e', 'd'), ('f', 'L')]


def test_draw_dot_source(Value):
    pytest.importorskip("graphviz")
    L = lecture_graph(Value)
    dot = viz.draw_dot(L)
    src = dot.source
    assert "rankdir=LR" in src
    assert "{ L | data -8.0000 | grad 1.0000 }" in src
    assert "{ a | data 2.0000 | grad 6.0000 }" in src
    assert src.count("shape=record") == 7
    assert src.count('label="*"') == 2 and src.count('label="+"') == 1
    assert src.count("->") == 6 + 3                   # child -> op node, op node -> result
    assert 'rankdir=TB' in viz.draw_dot(L, rankdir='TB').source
    with pytest.raises(ValueError):
        viz.draw_dot(L, rankdir='XY')


def need_dot():
    """Skips where Graphviz's dot is missing, unless FASTGRAD_REQUIRE_DOT is set (.ci/run
    installs Graphviz and sets it, so that CI never skips the render tests)."""
    if shutil.which("dot") is None:
        if env_flag("FASTGRAD_REQUIRE_DOT"):
            pytest.fail("FASTGRAD_REQUIRE_DOT is set, but Graphviz's dot is not on PATH")
        pytest.skip("Graphviz's dot program is not installed (Debian: apt install graphviz); "
                    ".ci/run installs it")


# the lecture graph's records as the picture shows them: (label, data, grad)
LECTURE_RECORDS = {('a', 'data 2.0000', 'grad 6.0000'), ('b', 'data -3.0000', 'grad -4.0000'),
                   ('c', 'data 10.0000', 'grad -2.0000'), ('e', 'data -6.0000', 'grad -2.0000'),
                   ('d', 'data 4.0000', 'grad -2.0000'), ('f', 'data -2.0000', 'grad 4.0000'),
                   ('L', 'data -8.0000', 'grad 1.0000')}


def svg_nodes(svg):
    """The texts of each node of a Graphviz SVG, one tuple per node, in drawing order."""
    ns = {'svg': 'http://www.w3.org/2000/svg'}
    return [tuple(t.text.strip() for t in g.iterfind('svg:text', ns))
            for g in ET.fromstring(svg).iter('{http://www.w3.org/2000/svg}g')
            if g.get('class') == 'node']


def test_draw_dot_renders(Value):
    pytest.importorskip("graphviz")
    need_dot()
    svg = viz.draw_dot(lecture_graph(Value)).pipe(format='svg').decode()
    nodes = svg_nodes(svg)
    assert {n for n in nodes if len(n) == 3} == LECTURE_RECORDS and len(nodes) == 7 + 3
    assert sorted(n for n in nodes if len(n) == 1) == [('*',), ('*',), ('+',)]
    # what a notebook displays is the same picture
    assert svg_nodes(viz.draw_dot(lecture_graph(Value))._repr_mimebundle_()['image/svg+xml']) == nodes


def test_draw_dot_without_dot_shows_the_source(Value, tmp_path, monkeypatch):
    pytest.importorskip("graphviz")
    monkeypatch.setenv("PATH", str(tmp_path))           # no dot on it
    dot = viz.draw_dot(lecture_graph(Value))
    bundle = dot._repr_mimebundle_()
    assert list(bundle) == ['text/plain']
    first, rest = bundle['text/plain'].split('\n', 1)
    assert first == viz.NO_DOT and 'apt install graphviz' in first
    assert rest == dot.source and '{ a | data 2.0000 | grad 6.0000 }' in rest


def test_gradcheck_passes_and_reports(Value):
    f = lambda x, y: (x * y + x.exp()).tanh() + (y ** 2).log() + x.sigmoid() * abs(y)
    assert fastgrad.gradcheck(f, [Value(0.3), Value(-1.2)])
    assert fastgrad.gradcheck(f, [0.3, -1.2])

    class Wrong:
        """x * x with a wrong local derivative (3x instead of 2x), added the lecture's way."""
        def __call__(self, x):
            out = Value(x.data * x.data, (x,), 'sq')

            def _backward():
                x.grad += 3 * x.data * out.grad
            out._backward = _backward
            return out

    with pytest.raises(fastgrad.GradcheckError, match=r"input 0 .*backward 4\.5, finite difference (2\.999|3\.0)"):
        fastgrad.gradcheck(Wrong(), [Value(1.5)])
    assert fastgrad.gradcheck(Wrong(), [Value(1.5)], raise_exception=False) is False


def test_no_grad(Value):
    a = Value(1.5)
    with fastgrad.no_grad():
        assert not fastgrad.is_grad_enabled()
        y = (a * 2.0 + a).tanh() ** 2 + a.log()
        with fastgrad.no_grad():                   # nests
            z = a * a
        w = a * a
    assert fastgrad.is_grad_enabled()
    assert y.data == pytest.approx(math.tanh(4.5) ** 2 + math.log(1.5), rel=1e-12)
    assert y._prev == set() and y._op == '' and z._prev == set() and w._prev == set()
    y.backward()
    assert a.grad == 0.0                           # nothing recorded leads back to a
    v = a * a                                      # recording again after the block
    assert v._prev == {a}

    @fastgrad.no_grad()
    def evaluate(x):
        return x * 3.0
    assert evaluate(a)._prev == set()


def test_no_grad_decorates_a_generator_function(Value):
    # as torch.no_grad: the generator's steps run in the block, the consumer's code not
    a = Value(2.0)
    inside = []

    @fastgrad.no_grad()
    def stream(n):
        for k in range(n):
            inside.append(fastgrad.is_grad_enabled())
            try:
                sent = yield a * float(k)
            except KeyError:
                sent = -1.0
            if sent is not None:
                yield a * sent
        return "done"

    assert inspect.isgeneratorfunction(stream) and stream.__name__ == "stream"
    g = stream(3)
    x = next(g)
    assert x._prev == set() and x.data == 0.0
    assert fastgrad.is_grad_enabled() and (a * 2.0)._prev != set()   # between the items
    y = g.send(5.0)                                 # a send runs in the block too
    assert y._prev == set() and y.data == 10.0
    assert next(g).data == 2.0
    z = g.throw(KeyError("caught by the generator"))   # and a throw
    assert z._prev == set() and z.data == -2.0
    assert next(g).data == 4.0
    with pytest.raises(StopIteration) as end:
        next(g)
    assert end.value.value == "done"                 # the generator's return value
    assert inside == [False, False, False]
    for leave in (lambda g: g.close(), lambda g: g.throw(ValueError("not caught"))):
        g = stream(2)
        next(g)
        with contextlib.suppress(ValueError):
            leave(g)
        assert fastgrad.is_grad_enabled()            # every block was left


def test_no_grad_is_per_thread(Value):
    a = Value(2.0)
    inside, recorded = threading.Event(), []

    def other():
        inside.wait(5)
        recorded.append(len((a * 3.0)._prev))       # this thread is not in a no_grad block

    t = threading.Thread(target=other)
    t.start()
    with fastgrad.no_grad():
        inside.set()
        t.join(5)
        assert (a * 3.0)._prev == set()
    assert recorded == [2]


def grad_mode_scenario(api, make):
    """Where the grad mode stands at each point of a script of nested blocks, bare calls
    and decorators, and whether an op records there (make()); api is fastgrad or torch."""
    seen = []

    def note():
        seen.append((api.is_grad_enabled(), make()))

    @api.enable_grad()
    def recording():
        note()

    @api.set_grad_enabled(False)
    def not_recording():
        note()

    @api.no_grad                            # (without parentheses, as torch allows)
    def bare():
        note()

    note()
    bare()
    with api.no_grad():
        note()
        with api.enable_grad():
            note()
            with api.no_grad():
                note()
            note()
        recording()
        note()
        with api.set_grad_enabled(True):
            note()
        note()
        api.set_grad_enabled(True)          # a bare call inside a block: until the block ends
        note()
    note()                                  # the block puts back the mode it found
    not_recording()
    note()
    api.set_grad_enabled(False)
    note()
    with api.enable_grad():
        note()
    recording()
    note()
    api.set_grad_enabled(True)
    note()
    return seen


def test_enable_grad_and_set_grad_enabled(Value):
    a = Value(2.0)
    seen = grad_mode_scenario(fastgrad, lambda: a in (a * 3.0)._prev)
    assert [mode for mode, _ in seen] == [True, False, False, True, False, True, True, False,
                                          True, False, True, True, False, True, False, True,
                                          True, False, True]
    assert all(mode == records for mode, records in seen)   # ops follow the mode
    assert fastgrad.is_grad_enabled()
    b = a * 3.0
    b.backward()
    assert a.grad == 3.0


def test_grad_mode_as_torch_has_it(Value):
    torch = pytest.importorskip("torch")
    t = torch.tensor(2.0, requires_grad=True)
    a = Value(2.0)
    ours = grad_mode_scenario(fastgrad, lambda: a in (a * 3.0)._prev)
    theirs = grad_mode_scenario(torch, lambda: (t * 3.0).requires_grad)
    assert ours == theirs


def test_enable_grad_decorates_a_generator_function(Value):
    a = Value(2.0)

    @fastgrad.enable_grad()
    def stream(n):
        for k in range(n):
            yield a * float(k)

    with fastgrad.no_grad():
        g = stream(2)
        assert a in next(g)._prev              # the step records
        assert (a * 2.0)._prev == set()        # the caller's block holds between items
        assert a in next(g)._prev
    assert fastgrad.is_grad_enabled()


def test_grad_mode_refuses_bad_arguments(Value):
    for mode in (0, 1, None, "False", 1.0):
        with pytest.raises(TypeError, match="set_grad_enabled takes True or False"):
            fastgrad.set_grad_enabled(mode)
        assert fastgrad.is_grad_enabled()
    for block in (fastgrad.no_grad, fastgrad.enable_grad):
        with pytest.raises(TypeError, match=r"takes a function to decorate or nothing, not 'bool'"):
            block(False)
    assert fastgrad.is_grad_enabled()


def test_grad_mode_blocks_can_be_entered_again(Value):
    # one instance, nested and from two threads at once: each entry puts back its own mode
    a = Value(2.0)
    block, other_entered, main_left = fastgrad.no_grad(), threading.Event(), threading.Event()
    seen = []

    def other():
        with block:
            other_entered.set()
            main_left.wait(5)
            seen.append(a in (a * 3.0)._prev)
        seen.append(a in (a * 3.0)._prev)

    t = threading.Thread(target=other)
    with block:
        with block:
            pass
        assert not fastgrad.is_grad_enabled()
        t.start()
        other_entered.wait(5)
    assert fastgrad.is_grad_enabled() and a in (a * 3.0)._prev
    main_left.set()
    t.join(5)
    assert seen == [False, True]


def test_set_grad_enabled_is_per_thread(Value):
    a = Value(2.0)
    off, checked, recorded = threading.Event(), threading.Event(), []

    def other():
        fastgrad.set_grad_enabled(False)
        recorded.append(a in (a * 3.0)._prev)
        off.set()
        checked.wait(5)
        fastgrad.set_grad_enabled(True)     # (leaves the process as it found it)

    t = threading.Thread(target=other)
    t.start()
    off.wait(5)
    assert fastgrad.is_grad_enabled() and a in (a * 3.0)._prev   # while the other's is off
    checked.set()
    t.join(5)
    assert recorded == [False]


def test_demo_reaches_micrographs_accuracy():
    from fastgrad import demo
    model, curve = demo.train(steps=100)
    assert curve[-1][1] >= 0.99
    assert curve[-1][0] < curve[0][0] / 10


@pytest.mark.unsanitized       # matplotlib's C++ font code trips AddressSanitizer's runtime
def test_demo_writes_its_picture(tmp_path):
    from fastgrad import demo
    pytest.importorskip("matplotlib")
    assert demo.main(["--steps", "100", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "moons.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_runs_without_the_demo_extra(tmp_path, monkeypatch, capsys):
    # no tqdm: a line per tenth of the run on stdout; no matplotlib: no picture, said so
    from fastgrad import demo
    monkeypatch.setitem(sys.modules, "tqdm", None)          # (import then fails)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert demo.main(["--steps", "20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == [f"{k}/20" for k in (*range(1, 20, 2), 20)]
    assert all(re.fullmatch(r"step \d+/20  loss \d\.\d{4}  accuracy \d+%", line) for line in lines)
    assert "no picture: matplotlib is not installed" in out.err
    assert not any(tmp_path.iterdir())
