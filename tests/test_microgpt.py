"""microgpt's contract: its engine API (fastgrad.microgpt.Value) on both engines, checked
against the microgpt-style engine of examples/microgpt.py (the oracle: a Value whose ops
return their local gradients), and its script run unchanged but for the import."""
import copy
import importlib
import itertools
import math
import pathlib
import pickle
import random
import re
import sys

import pytest

from fastgrad import functional as F
from fastgrad import no_grad, optim, reference
from fastgrad._engine import env_flag
from fastgrad.ops import Op
from op_examples import EXAMPLES, build_example

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from gpt_runs import forward, load_script  # noqa: E402

SCRIPT = load_script()                  # the script with its own engine
Oracle = SCRIPT.Value
PURE = env_flag("FASTGRAD_PUREPYTHON")


def core():
    """The compiled module (only where the compiled engine is under test)."""
    return importlib.import_module("fastgrad._core")


@pytest.fixture(scope="module", params=["compiled", "reference"])
def G(request):
    """fastgrad.microgpt.Value's class on each engine."""
    if request.param == "compiled":
        if PURE:
            pytest.skip("compiled engine deselected")
        return pytest.importorskip("fastgrad._core").GptValue
    return reference.GptValue


def test_the_import_names_the_chosen_engines_class():
    import fastgrad
    from fastgrad.microgpt import Value
    expected = reference.GptValue if fastgrad.ENGINE == "reference" else core().GptValue
    assert Value is expected


def program(V, seed):
    """A seeded microgpt-style expression over 4 leaves, with microgpt's ops and a custom
    op made microgpt's way (a node with its local gradient given). Returns (leaves, root)."""
    rnd = random.Random(seed)
    leaves = [V(rnd.uniform(0.5, 1.5)) for _ in range(4)]
    nodes = list(leaves)
    for _ in range(40):
        a, b = rnd.choice(nodes), rnd.choice(nodes)
        kind = rnd.randrange(9)
        if kind == 0:
            out = a + b
        elif kind == 1:
            out = a * b
        elif kind == 2:
            out = (a * a + 0.5) ** rnd.choice([2, -1, 0.5, 3])
        elif kind == 3:
            out = (a * 0.3).exp()
        elif kind == 4:
            out = (a * a + 1.0).log()
        elif kind == 5:
            out = (a - b).relu()
        elif kind == 6:
            out = 2.0 / (a * a + 1.0) - b
        elif kind == 7:                # sin, microgpt's way: its local gradient given
            out = V(math.sin(a.data), (a,), (math.cos(a.data),))
        else:                          # a node over two children, one used twice
            out = V(a.data * b.data * a.data, (a, b, a), (a.data * b.data, a.data ** 2,
                                                         a.data * b.data))
        if abs(out.data) < 50:
            nodes.append(out)
    root = sum(nodes[4:])
    return leaves, root


@pytest.mark.parametrize("seed", range(6))
def test_values_and_grads_equal_microgpts(G, seed):
    mine, root = program(G, seed)
    theirs, oracle_root = program(Oracle, seed)
    assert root.data == oracle_root.data
    root.backward()
    oracle_root.backward()
    assert root.grad == 1.0
    for a, b in zip(mine, theirs):
        assert a.grad == pytest.approx(b.grad, rel=1e-12)
    root.backward()                    # grads accumulate, as in microgpt
    oracle_root.backward()
    for a, b in zip(mine, theirs):
        assert a.grad == pytest.approx(b.grad, rel=1e-12)


def test_constructor_children_and_local_grads(G):
    x = G(2.0)
    assert x.grad == 0 and x._children == () and x._local_grads == ()
    y = G(8.0, (x,), (12.0,))
    assert y._children == (x,) and y._children[0] is x and y._local_grads == (12.0,)
    z = x * x
    assert z._children == (x, x) and z._local_grads == (2.0, 2.0)
    s = x + 3
    assert s._children[0] is x and s._children[1].data == 3.0 and s._local_grads == (1.0, 1.0)
    (y * 2 + z).backward()
    assert x.grad == 12.0 * 2 + 4.0
    assert repr(x) == f"Value(data=2.0, grad={x.grad})"


# the ops a microgpt-style Value spells (AFFINE is fastgrad.engine's; CUSTOM micrograd's)
GPT_OPS = [op for op in EXAMPLES if op not in (Op.CUSTOM, Op.AFFINE)]


@pytest.mark.parametrize("op", GPT_OPS, ids=lambda op: op.name)
def test_local_grads_are_each_ops_derivatives(G, op):
    # every op's _local_grads: the reference's (LOCAL_GRADS, checked against its rules
    # below) on both engines, one per child
    for case in range(len(EXAMPLES[op].cases)):
        leaves, node = build_example(G, op, case)
        rleaves, rnode = build_example(reference.GptValue, op, case)
        assert len(node._children) == len(node._local_grads)
        assert list(node._local_grads) == pytest.approx(list(rnode._local_grads), rel=1e-15,
                                                        nan_ok=True)
        assert [c.data for c in node._children] == [c.data for c in rnode._children]


@pytest.mark.parametrize("op", [op for op in EXAMPLES], ids=lambda op: op.name)
def test_reference_local_grads_agree_with_its_rules(op):
    # LOCAL_GRADS (the table _local_grads reads) against RULES, on every op's example
    for case in range(len(EXAMPLES[op].cases)):
        leaves, node = build_example(reference.Value, op, case)
        if not node._children:
            continue
        for c in node._children:
            c._grad = 0.0
        node._grad = 1.0
        reference.RULES[node._code](node)
        got = {}
        for c, d in zip(node._children, reference.LOCAL_GRADS[node._code](node)):
            got[id(c)] = got.get(id(c), 0.0) + d
        for c in node._children:
            assert c._grad == pytest.approx(got[id(c)], rel=1e-15, nan_ok=True)


def test_a_node_with_given_local_grads_runs_no_python_in_backward(G):
    if G is reference.GptValue:
        pytest.skip("the reference engine's sweep is Python")
    x = G(0.7)
    y = x
    for _ in range(200):
        y = G(math.sin(y.data), (y,), (math.cos(y.data),))
    calls = []
    sys.setprofile(lambda frame, event, arg: calls.append(event) if event == "call" else None)
    try:
        y.backward()
    finally:
        sys.setprofile(None)
    assert calls == []                  # no Python frame ran during the sweep
    expected = 1.0
    v = 0.7
    for _ in range(200):
        expected *= math.cos(v)
        v = math.sin(v)
    assert x.grad == pytest.approx(expected, rel=1e-12)


def live(G):
    if G is reference.GptValue:
        return None
    return core()._tape_stats()["live"]


def test_clear_errors(G):
    x, y = G(1.0), G(2.0)
    before = live(G)
    with pytest.raises(ValueError, match="one local gradient per child"):
        G(3.0, (x, y), (1.0,))
    with pytest.raises(ValueError, match="one local gradient per child"):
        G(3.0, (x,))
    with pytest.raises(TypeError, match="local gradient"):
        G(3.0, (x,), ("a",))
    with pytest.raises(TypeError, match="children"):
        G(3.0, (1.0,), (1.0,))
    with pytest.raises(TypeError, match="Value data"):
        G("3")
    with pytest.raises(TypeError):
        x + "a"
    with pytest.raises(ZeroDivisionError):
        G(0.0) ** -1
    assert live(G) == before
    (x * y).backward()
    assert (x.grad, y.grad) == (2.0, 1.0)


def test_the_two_apis_do_not_mix(G):
    V = reference.Value if G is reference.GptValue else core().Value
    a, b = G(1.0), V(2.0)
    for f in (lambda: a + b, lambda: b * a, lambda: a ** b, lambda: G(1.0, (b,), (1.0,)),
              lambda: V(1.0, (a,)), lambda: F.linear([a], [[b]])):
        with pytest.raises(TypeError, match="Value"):
            f()


def test_no_grad_pickle_and_optimizers(G):
    x = G(1.5)
    with no_grad():
        y = x * x + 1
    assert y._children == () and y.data == 3.25
    w = G(0.5)
    w.grad = 0.25
    for w2 in (pickle.loads(pickle.dumps(w)), copy.copy(w), copy.deepcopy(w)):
        assert type(w2) is G and w2 is not w and (w2.data, w2.grad) == (0.5, 0.25)
    for how in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="only leaf Values can be pickled or copied"):
            how(x * 2)
    p = [G(0.3), G(-0.2)]
    opt = optim.Adam(p, lr=0.1, betas=(0.85, 0.99), eps=1e-8)
    for _ in range(3):
        opt.zero_grad()
        loss = (p[0] * p[1] + p[0] ** 2)
        loss.backward()
        opt.step()
    q = [reference.GptValue(0.3), reference.GptValue(-0.2)]
    ropt = optim.Adam(q, lr=0.1, betas=(0.85, 0.99), eps=1e-8)
    for _ in range(3):
        ropt.zero_grad()
        (q[0] * q[1] + q[0] ** 2).backward()
        ropt.step()
    assert [v.data for v in p] == [v.data for v in q]


def test_recompute_refuses_given_local_grads(G):
    x = G(1.0)
    y = G(2.0, (x,), (3.0,)) * x
    with pytest.raises(TypeError, match="local gradients"):
        y.recompute()
    z = (x * 3.0).exp()                 # the operators' nodes replay as fastgrad.engine's
    x.data = 0.5
    z.recompute()
    assert z.data == math.exp(1.5)


# -------------------------------------------------------------------- the script

DROP_IN = ["from fastgrad.engine import Value", "from fastgrad.microgpt import Value"]


@pytest.fixture(scope="module")
def baseline_losses():
    script = load_script()
    return list(itertools.islice(script.training(1000), 2))


@pytest.mark.parametrize("line", DROP_IN)
def test_the_script_with_only_the_import_changed(line, baseline_losses):
    script = load_script(line)
    assert script.Value.__module__.startswith("fastgrad")
    losses = list(itertools.islice(script.training(1000), 2))
    assert losses == [pytest.approx(b, rel=1e-9) for b in baseline_losses]
    random.seed(7)
    names = [script.sample() for _ in range(3)]
    assert all(isinstance(n, str) and len(n) <= script.block_size and set(n) <= set(script.chars)
               for n in names)


def test_the_benchmarks_forward_is_the_loops(baseline_losses):
    # gpt_runs.forward (one name's forward, which the benchmark times backward on) builds
    # the loss of the script's first step
    assert forward(load_script(), SCRIPT.docs[0]).data == baseline_losses[0]


@pytest.mark.compiled
def test_the_scripts_loop_keeps_a_steps_graph_until_the_next_step_as_microgpts_does():
    # microgpt's loop runs at module level, so between steps its variables (loss, losses,
    # logits, probs) still reach the last step's graph; the pure-Python baseline's cyclic
    # GC pays for that, and the benchmark times the loop as it runs
    script = load_script("from fastgrad.engine import Value")
    steps = script.training(1000)
    before = core()._tape_stats()["live"]
    next(steps)
    held = core()._tape_stats()["live"] - before
    assert held > 1000                              # step 0's graph, between the steps
    for _ in range(3):
        next(steps)
    assert core()._tape_stats()["live"] - before < 2 * held     # one step's graph at a time
    steps.close()
    assert core()._tape_stats()["live"] == before


@pytest.mark.compiled
@pytest.mark.parametrize("line", DROP_IN)
def test_the_scripts_step_gets_the_one_pass_backward(line):
    # the script rebinds `probs` before it takes the log of the target's: the unused
    # probabilities die there, and the log's node must not land in their slots, below its
    # child (with the lowest free slot whatever the children, it did from position 1 on,
    # on a fresh arena as after a step's graph died)
    script = load_script(line)
    for step in range(2):
        loss = forward(script, script.docs[step])
        assert core()._tape_stats()["free"] > 0      # (slots did die meanwhile)
        assert core()._test_descends(loss)
        loss.backward()
        del loss


def test_the_fused_model_draws_the_scripts_weights_and_follows_its_losses(baseline_losses):
    from fastgrad.gpt import GPT
    script = load_script("from fastgrad.engine import Value")
    gpt = GPT()
    assert [p.data for p in gpt.params] == [p.data for p in script.params]
    assert gpt.docs == script.docs and gpt.chars == script.chars
    losses = [gpt.train_step(k, 1000) for k in range(2)]
    assert losses == [pytest.approx(b, rel=1e-9) for b in baseline_losses]


def test_fused_sampling_records_no_graph():
    from fastgrad.gpt import GPT
    gpt = GPT()
    before = None if PURE else live(core().GptValue)
    random.seed(3)
    name = gpt.sample()
    assert isinstance(name, str) and set(name) <= set(gpt.chars)
    if before is not None:
        assert live(core().GptValue) == before


@pytest.mark.unsanitized               # (matplotlib cannot run under AddressSanitizer)
def test_the_gpt_example_runs_end_to_end(tmp_path, monkeypatch, capsys):
    # `python -m fastgrad.gpt`, shortened: progress, 20 names, the loss curve as a PNG
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")             # (both from the demo extra)
    from fastgrad import gpt
    monkeypatch.chdir(tmp_path)
    gpt.main(["3"])
    out = capsys.readouterr()
    samples = [line for line in out.out.splitlines() if line.startswith("sample")]
    assert len(samples) == 20
    png = tmp_path / "gpt-output" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "training" in out.err            # tqdm's progress bar


def test_the_gpt_example_runs_without_the_demo_extra(tmp_path, monkeypatch, capsys):
    # no tqdm: a line per tenth of the run on stdout; no matplotlib: no picture, said so
    from fastgrad import gpt
    monkeypatch.setitem(sys.modules, "tqdm", None)          # (import then fails)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.chdir(tmp_path)
    gpt.main(["20"])
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == [f"{k}/20" for k in (*range(1, 20, 2), 20)]
    assert all(re.fullmatch(r"step \d+/20  loss \d\.\d{4}", line) for line in lines)
    assert len([line for line in out.out.splitlines() if line.startswith("sample")]) == 20
    assert "no loss curve: matplotlib is not installed" in out.err
    assert not any(tmp_path.iterdir())


def test_the_gpt_examples_command_line(capsys):
    # `python -m fastgrad.gpt --help` says what it takes (before matplotlib is imported);
    # a step count that is not a positive integer is a usage error
    from fastgrad import gpt
    with pytest.raises(SystemExit) as shown:
        gpt.main(["--help"])
    assert shown.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m fastgrad.gpt [-h] [steps]")
    for wrong in (["0"], ["ten"], ["3", "4"]):
        with pytest.raises(SystemExit) as refused:
            gpt.main(wrong)
        assert refused.value.code == 2
        assert "usage: python -m fastgrad.gpt" in capsys.readouterr().err


def test_adam_is_microgpts_optimizer(G):
    # fastgrad.optim.Adam with microgpt's settings, its lr decayed through param_groups,
    # against the update as microgpt writes it (m_hat, v_hat), on the same grads
    rnd = random.Random(4)
    start = [rnd.uniform(-1, 1) for _ in range(6)]
    ps = [G(x) for x in start]
    opt = optim.Adam(ps, lr=0.01, betas=(0.85, 0.99), eps=1e-8)
    data, m, v = list(start), [0.0] * 6, [0.0] * 6
    for step in range(5):
        grads = [rnd.uniform(-2, 2) for _ in range(6)]
        for p, g in zip(ps, grads):
            p.grad = g
        opt.param_groups[0]['lr'] = 0.01 * (1 - step / 5)
        opt.step()
        opt.zero_grad()
        lr = 0.01 * (1 - step / 5)
        for i, g in enumerate(grads):
            m[i] = 0.85 * m[i] + (1 - 0.85) * g
            v[i] = 0.99 * v[i] + (1 - 0.99) * g ** 2
            m_hat = m[i] / (1 - 0.85 ** (step + 1))
            v_hat = v[i] / (1 - 0.99 ** (step + 1))
            data[i] -= lr * m_hat / (v_hat ** 0.5 + 1e-8)
        assert [p.data for p in ps] == [pytest.approx(d, rel=1e-12) for d in data]
        assert all(p.grad == 0.0 for p in ps)


@pytest.mark.compiled
def test_the_compiled_classes_cannot_be_subclassed():
    from fastgrad import _core
    for cls in (_core.Value, _core.GptValue):
        with pytest.raises(TypeError):
            type("Sub", (cls,), {})
    # the shared base can be, but its instances name no node: every use is refused
    Sub = type("Sub", (_core._Handle,), {})
    before = _core._tape_stats()["live"]
    for h in (Sub(), _core._Handle()):
        for use in (lambda: h.data, lambda: h * 2.0, lambda: h.backward(), lambda: h.exp()):
            with pytest.raises(ValueError, match="never initialised"):
                use()
        del h
    assert _core._tape_stats()["live"] == before