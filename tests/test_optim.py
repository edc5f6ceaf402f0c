"""fastgrad.optim: the C loops give exactly the updates written out in Python."""
import copy
import math
import pickle

import pytest

from fastgrad import optim, reference


def quadratic(Value, ps):
    """A loss with different grads per parameter."""
    loss = Value(0.0)
    for k, p in enumerate(ps):
        loss = loss + (p - 0.1 * k) ** 2 * (k + 1) + (p * ps[0]).tanh()
    return loss


def make(Value):
    return [Value(0.5 - 0.2 * k) for k in range(5)]


def test_sgd_is_micrographs_update(Value):
    ps = make(Value)
    opt = optim.SGD(ps, lr=0.1)
    for step in range(5):
        loss = quadratic(Value, ps)
        opt.zero_grad()
        assert all(p.grad == 0.0 for p in ps)
        loss.backward()
        expected = [p.data - 0.1 * p.grad for p in ps]
        opt.step()
        assert [p.data for p in ps] == expected


def test_adam_matches_its_formula(Value):
    ps = make(Value)
    opt = optim.Adam(ps, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.01)
    m, v = [0.0] * len(ps), [0.0] * len(ps)
    for step in range(1, 8):
        loss = quadratic(Value, ps)
        opt.zero_grad()
        loss.backward()
        expected = []
        for k, p in enumerate(ps):       # the update, written out in Python
            g = p.grad + 0.01 * p.data
            m[k] = 0.8 * m[k] + (1 - 0.8) * g
            v[k] = 0.95 * v[k] + (1 - 0.95) * g * g
            m_hat, v_hat = m[k] / (1 - 0.8 ** step), v[k] / (1 - 0.95 ** step)
            expected.append(p.data - 0.05 * m_hat / (math.sqrt(v_hat) + 1e-6))
        opt.step()
        assert [p.data for p in ps] == pytest.approx(expected, rel=1e-13, abs=1e-15)


def test_adam_against_torch(Value):
    torch = pytest.importorskip("torch")
    ps = make(Value)
    ts = [torch.tensor(p.data, dtype=torch.float64, requires_grad=True) for p in ps]
    opt = optim.Adam(ps, lr=0.05, weight_decay=0.01)
    topt = torch.optim.Adam(ts, lr=0.05, weight_decay=0.01)
    for _ in range(10):
        opt.zero_grad()
        quadratic(Value, ps).backward()
        topt.zero_grad()
        quadratic(lambda x: torch.tensor(x, dtype=torch.float64), ts).backward()
        opt.step()
        topt.step()
    assert [p.data for p in ps] == pytest.approx([t.item() for t in ts], rel=1e-10)
    # the state dict has PyTorch's layout and, to rounding, its moments
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert set(ours['state']) == set(theirs['state']) == set(range(len(ps)))
    assert ours['param_groups'][0]['params'] == theirs['param_groups'][0]['params']
    for k, state in ours['state'].items():
        assert state['step'] == theirs['state'][k]['step'].item() == 10
        for key in ('exp_avg', 'exp_avg_sq'):
            assert state[key] == pytest.approx(theirs['state'][k][key].item(), rel=1e-10)


def test_learning_rate_schedule_hook(Value):
    ps = make(Value)
    opt = optim.SGD(ps, lr=0.1)
    quadratic(Value, ps).backward()
    opt.param_groups[0]['lr'] = 0.0          # what a scheduler does
    before = [p.data for p in ps]
    opt.step()
    assert [p.data for p in ps] == before
    assert opt.param_groups[0]['params'] == tuple(ps)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_the_parameters_cannot_be_changed_under_the_kernel(Value, name):
    # the kernel keeps the slots of the Values it was made with: replacing or editing
    # the group's parameters is refused, not ignored, and leaves every Value as it was
    ps = make(Value)
    opt = getattr(optim, name)(ps, lr=0.1)
    quadratic(Value, ps).backward()
    with pytest.raises(TypeError):
        opt.param_groups[0]['params'][0] = Value(9.0)
    other = make(Value)
    opt.param_groups[0]['params'] = other
    before = [(p.data, p.grad) for p in ps + other]
    for call in (opt.step, opt.zero_grad):
        with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\] was replaced"):
            call()
    assert [(p.data, p.grad) for p in ps + other] == before
    if name == "Adam":
        assert opt.steps == 0


def test_a_repeated_parameter_is_stepped_once_per_listing_with_a_warning(Value):
    # as micrograd's loop `for p in params: p.data -= lr * p.grad` over the same list
    ps = make(Value)
    with pytest.warns(UserWarning, match=r"a Value more than once \(2 repeated"):
        opt = optim.SGD(ps + ps[:2], lr=0.1)
    quadratic(Value, ps).backward()
    expected = [p.data - 0.1 * p.grad * (2 if k < 2 else 1) for k, p in enumerate(ps)]
    opt.step()
    assert [p.data for p in ps] == pytest.approx(expected, rel=1e-15)


def test_repr_shows_the_group(Value):
    opt = optim.Adam(make(Value), lr=0.01, betas=(0.85, 0.99))
    assert repr(opt) == "Adam(5 parameters, lr=0.01, betas=(0.85, 0.99), eps=1e-08, weight_decay=0.0)"
    opt.param_groups[0]['lr'] = 0.005
    assert repr(optim.SGD(make(Value), lr=0.1)) == "SGD(5 parameters, lr=0.1)"
    assert "lr=0.005," in repr(opt)


def test_bad_arguments(Value):
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError):
        optim.SGD(make(Value), lr=-1.0)
    with pytest.raises(ValueError):
        optim.Adam(make(Value), betas=(1.0, 0.9))
    with pytest.raises(TypeError):
        optim.SGD([Value(1.0), 2.0], lr=0.1)
    with pytest.raises(TypeError):                  # (refused before any repeat warns)
        optim.SGD([2.0, 2.0], lr=0.1)


@pytest.mark.compiled
@pytest.mark.parametrize("name, kw", [("SGD", dict(lr=0.1)),
                                      ("Adam", dict(lr=0.05, weight_decay=0.01))])
def test_compiled_loops_equal_the_python_kernel_bit_for_bit(name, kw):
    from fastgrad._core import Value as C
    from fastgrad.reference import Value as R
    cs, rs = make(C), make(R)
    copt, ropt = getattr(optim, name)(cs, **kw), getattr(optim, name)(rs, **kw)
    assert isinstance(ropt._params, reference._Params)
    for _ in range(6):
        for ps, opt, V in ((cs, copt, C), (rs, ropt, R)):
            opt.zero_grad()
            quadratic(V, ps).backward()
        for c, r in zip(cs, rs):
            c.grad = r.grad          # the same grads in (sums may differ in the last bit)
        copt.step()
        ropt.step()
        assert [c.data for c in cs] == [r.data for r in rs]


@pytest.mark.compiled
@pytest.mark.parametrize("name, kw", [("SGD", dict(lr=0.1)),
                                      ("Adam", dict(lr=0.05, weight_decay=0.01))])
def test_compiled_loops_over_scattered_slots_equal_the_python_kernel(name, kw):
    # the C loops go over runs of consecutive slots: parameters listed out of slot
    # order, with gaps, runs of one and one listed twice give the updates of the
    # Python kernel, which takes them one by one
    from fastgrad._core import Value as C
    from fastgrad.reference import Value as R
    order = [0, 1, 2, 5, 6, 7, 8, 3, 10, 11, 10, 4]
    made = {C: [C(0.5 - 0.1 * k) for k in range(12)], R: [R(0.5 - 0.1 * k) for k in range(12)]}
    cs, rs = [made[C][k] for k in order], [made[R][k] for k in order]
    with pytest.warns(UserWarning, match="more than once"):
        copt = getattr(optim, name)(cs, **kw)
    with pytest.warns(UserWarning, match="more than once"):
        ropt = getattr(optim, name)(rs, **kw)
    for _ in range(6):
        for ps, opt, V in ((cs, copt, C), (rs, ropt, R)):
            opt.zero_grad()
            assert all(p.grad == 0.0 for p in ps)
            quadratic(V, ps).backward()
        for c, r in zip(cs, rs):
            c.grad = r.grad
        copt.step()
        ropt.step()
        assert [c.data for c in cs] == [r.data for r in rs]
    assert made[C][9].data == 0.5 - 0.9     # (not a parameter: untouched)


@pytest.mark.parametrize("name, kw", [("SGD", dict(lr=0.1)),
                                      ("Adam", dict(lr=0.05, weight_decay=0.01))])
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_an_optimizer_pickles_and_copies_with_its_state(Value, name, kw, how):
    # a checkpoint of (parameters, optimizer) in mid-training resumes where the
    # original goes on: the copy steps the copied parameters, from the same moments
    ps = make(Value)
    opt = getattr(optim, name)(ps, **kw)

    def train(ps, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            quadratic(Value, ps).backward()
            opt.step()

    train(ps, opt, 3)
    saved = (pickle.loads(pickle.dumps((ps, opt))) if how == "pickle"
             else copy.deepcopy((ps, opt)))
    ps2, opt2 = saved
    assert all(a is b for a, b in zip(opt2.param_groups[0]['params'], ps2))
    assert [p.data for p in ps2] == [p.data for p in ps]
    train(ps, opt, 3)
    train(ps2, opt2, 3)
    assert [p.data for p in ps2] == [p.data for p in ps]
    assert getattr(opt2, "steps", None) == getattr(opt, "steps", None)


def train(Value, ps, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        quadratic(Value, ps).backward()
        opt.step()


@pytest.mark.parametrize("name, kw, other", [
    ("SGD", dict(lr=0.1), dict(lr=0.7)),
    ("Adam", dict(lr=0.05, betas=(0.8, 0.95), weight_decay=0.01), dict(lr=0.3))])
@pytest.mark.parametrize("into", ["same engine", "reference"])
def test_a_state_dict_resumes_training_bit_for_bit(Value, name, kw, other, into):
    # PyTorch's checkpoint: the parameters' values and opt.state_dict(), loaded into a new
    # optimizer (made with other hyperparameters) over new Values, resume the run; the
    # dict is plain numbers, so the reference engine can take up the compiled one's run
    ps = make(Value)
    opt = getattr(optim, name)(ps, **kw)
    train(Value, ps, opt, 3)
    state, values = opt.state_dict(), [p.data for p in ps]
    train(Value, ps, opt, 3)
    V = Value if into == "same engine" else reference.Value
    ps2 = [V(x) for x in values]
    opt2 = getattr(optim, name)(ps2, **other)
    opt2.load_state_dict(state)
    assert opt2.param_groups[0] == dict(opt.param_groups[0], params=tuple(ps2))
    train(V, ps2, opt2, 3)
    assert [p.data for p in ps2] == [p.data for p in ps]
    assert opt2.state_dict() == opt.state_dict()


def test_an_adam_state_dict_is_pytorchs_layout_and_a_copy(Value):
    ps = make(Value)
    opt = optim.Adam(ps, lr=0.05)
    fresh = opt.state_dict()
    assert fresh == {'state': {}, 'param_groups': [
        {'params': [0, 1, 2, 3, 4], 'lr': 0.05, 'betas': (0.9, 0.999), 'eps': 1e-8,
         'weight_decay': 0.0}]}
    train(Value, ps, opt, 2)
    state = opt.state_dict()
    assert set(state['state']) == {0, 1, 2, 3, 4}
    assert all(set(s) == {'step', 'exp_avg', 'exp_avg_sq'} and s['step'] == 2
               for s in state['state'].values())
    assert all(s['exp_avg'] != 0.0 and s['exp_avg_sq'] > 0.0 for s in state['state'].values())
    before = copy.deepcopy(state)
    state['param_groups'][0]['lr'] = 9.0          # the dict is the caller's to edit
    state['state'][0]['exp_avg'] = 9.0
    assert opt.state_dict() == before and opt.param_groups[0]['lr'] == 0.05
    assert optim.SGD(ps, lr=0.1).state_dict()['state'] == {}
    # a fresh optimizer's dict puts a trained one back to its start
    opt.load_state_dict(fresh)
    twin = optim.Adam(make(Value), lr=0.05)
    for p, q in zip(ps, twin.param_groups[0]['params']):
        q.data = p.data
    train(Value, ps, opt, 2)
    train(Value, twin.param_groups[0]['params'], twin, 2)
    assert [p.data for p in ps] == [q.data for q in twin.param_groups[0]['params']]


def test_a_diverged_runs_state_dict_loads_back(Value):
    # nan and inf moments are a run's state like any other: refused only where they
    # cannot arise (a negative second moment)
    ps = make(Value)
    ps[1].data = math.inf
    opt = optim.Adam(ps, lr=0.05, weight_decay=0.1)
    train(Value, ps, opt, 2)
    state = opt.state_dict()
    assert math.isnan(state['state'][1]['exp_avg'])
    twin = optim.Adam(make(Value), lr=0.05, weight_decay=0.1)
    twin.load_state_dict(state)
    assert repr(twin.state_dict()) == repr(state)


def bad_state_dicts(good, sgd):
    """(what is wrong, a state dict) for an Adam over five parameters whose dict is good."""
    def edited(edit):
        sd = copy.deepcopy(good)
        edit(sd)
        return sd
    group = lambda sd: sd['param_groups'][0]
    return [
        ("not a mapping", [good['state'], good['param_groups']]),
        ("no 'state'", {'param_groups': good['param_groups']}),
        ("an extra key", dict(good, extra=1)),
        ("two groups", edited(lambda sd: sd['param_groups'].append(dict(group(sd))))),
        ("four parameters", edited(lambda sd: group(sd).update(params=[0, 1, 2, 3]))),
        ("indices out of order", edited(lambda sd: group(sd).update(params=[1, 0, 2, 3, 4]))),
        ("SGD's dict", sgd),
        ("a hyperparameter missing", edited(lambda sd: group(sd).pop('eps'))),
        ("a negative lr", edited(lambda sd: group(sd).update(lr=-1.0))),
        ("a beta of 1", edited(lambda sd: group(sd).update(betas=(0.9, 1.0)))),
        ("lr as text", edited(lambda sd: group(sd).update(lr="0.1"))),
        ("a state missing", edited(lambda sd: sd['state'].pop(4))),
        ("a state key missing", edited(lambda sd: sd['state'][2].pop('exp_avg'))),
        ("steps that differ", edited(lambda sd: sd['state'][3].update(step=2))),
        ("step 0", edited(lambda sd: [s.update(step=0) for s in sd['state'].values()])),
        ("a fractional step", edited(lambda sd: [s.update(step=2.5) for s in sd['state'].values()])),
        ("a negative second moment", edited(lambda sd: sd['state'][1].update(exp_avg_sq=-1.0))),
        ("a moment as text", edited(lambda sd: sd['state'][4].update(exp_avg="x"))),
        ("'state' as a list", edited(lambda sd: sd.update(state=list(sd['state'].values())))),
    ]


def test_load_state_dict_refuses_bad_input_and_changes_nothing(Value):
    ps = make(Value)
    opt = optim.Adam(ps, lr=0.05)
    train(Value, ps, opt, 3)
    good = opt.state_dict()
    other = optim.Adam(make(Value), lr=0.2)          # the one loaded into, trained apart
    train(Value, other.param_groups[0]['params'], other, 2)
    before = other.state_dict()
    sgd = optim.SGD(make(Value), lr=0.1).state_dict()
    for what, sd in bad_state_dicts(good, sgd):
        with pytest.raises((ValueError, TypeError)):
            other.load_state_dict(sd)
        assert other.state_dict() == before, what
    with pytest.raises(ValueError):
        optim.SGD(ps, lr=0.1).load_state_dict(good)  # Adam's moments into SGD
    other.load_state_dict(good)                      # and the good one loads
    assert other.state_dict() == good
