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
