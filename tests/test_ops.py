"""One test per op (test_op_<name>, checked by test_opcodes.py), on every operand
combination, against the closed form of its value and its derivatives."""
import math

import pytest

REL, ABS = 1e-12, 1e-15
approx = lambda x: pytest.approx(x, rel=REL, abs=ABS)

A, B = 1.7, -0.6


def operands(Value, a, b):
    """Value op Value, Value op number, number op Value: (x, y, [leaves with grads])."""
    va, vb = Value(a), Value(b)
    yield va, vb, (va, vb)
    va = Value(a)
    yield va, b, (va, None)
    vb = Value(b)
    yield a, vb, (None, vb)


def check_binary(Value, f, value, dfa, dfb):
    for x, y, (ga, gb) in operands(Value, A, B):
        out = f(x, y)
        out.backward()
        assert out.data == approx(value)
        if ga is not None:
            assert ga.grad == approx(dfa)
        if gb is not None:
            assert gb.grad == approx(dfb)


def test_op_leaf(Value):
    v = Value(3.5)
    assert (v.data, v.grad, v._op, v._prev) == (3.5, 0.0, '', set())
    v.backward()
    assert v.grad == 1.0


def test_op_add(Value):
    check_binary(Value, lambda x, y: x + y, A + B, 1.0, 1.0)


def test_op_mul(Value):
    check_binary(Value, lambda x, y: x * y, A * B, B, A)


def test_sub(Value):
    check_binary(Value, lambda x, y: x - y, A - B, 1.0, -1.0)


def test_div(Value):
    check_binary(Value, lambda x, y: x / y, A / B, 1 / B, -A / B**2)


@pytest.mark.parametrize("k", [2, 3, -1, -2, 0.5, 2.5, 0, 1, 2.0])
def test_op_pow(Value, k):
    a = Value(A)
    out = a ** k
    out.backward()
    assert out.data == approx(A ** k)
    assert a.grad == approx(k * A ** (k - 1))
    assert out._op == f'**{k}'


@pytest.mark.parametrize("k", [2**53 + 1, -(10**17) - 3, 2**70, True, False, 2.0, 1e-300])
def test_pow_op_string_is_micrographs(Value, k):
    # micrograd writes f'**{k}' from the exponent as given; an int beyond 2**53 keeps
    # every digit though the compiled engine computes with its nearest double
    import micrograd.engine
    theirs = micrograd.engine.Value(1.0) ** k
    ours = Value(1.0) ** k
    assert ours._op == theirs._op
    assert ours.data == theirs.data


@pytest.mark.parametrize("x, value, grad", [(2.5, 2.5, 1.0), (-2.5, 0.0, 0.0), (0.0, 0.0, 0.0)])
def test_op_relu(Value, x, value, grad):
    a = Value(x)
    out = a.relu()
    out.backward()
    assert (out.data, a.grad, out._op) == (value, grad, 'ReLU')


@pytest.mark.parametrize("x", [0.3, -1.2, 0.0, 20.0, 1000.0, -1000.0])
def test_op_tanh(Value, x):
    a = Value(x)
    out = a.tanh()
    out.backward()
    assert out.data == approx(math.tanh(x))
    assert a.grad == approx(1 - math.tanh(x) ** 2)
    assert out._op == 'tanh'


@pytest.mark.parametrize("x", [0.3, -1.2, 0.0, 700.0, -1000.0])
def test_op_exp(Value, x):
    a = Value(x)
    out = a.exp()
    out.backward()
    assert out.data == approx(math.exp(x))
    assert a.grad == approx(math.exp(x))
    assert out._op == 'exp'


@pytest.mark.parametrize("xs", ["values", "numbers"])
def test_op_affine(Value, xs):
    import micrograd.engine
    b, ws = Value(0.25), [Value(A), Value(B), Value(-0.3)]
    x = [Value(1.5), Value(-2.0), Value(0.7)] if xs == "values" else [1.5, -2, 0.7]
    out = Value._affine(b, ws, x)
    assert out._op == 'affine' and out._prev >= {b, *ws}
    assert len(out._prev) == 7                  # b, the w, the x (numbers become leaves)
    y = out * 3.0
    y.backward()
    # the same as micrograd's chain b + w0*x0 + w1*x1 + w2*x2, to the last bit for data
    M = micrograd.engine.Value
    mb, mws = M(0.25), [M(A), M(B), M(-0.3)]
    mx = [M(1.5), M(-2.0), M(0.7)] if xs == "values" else [1.5, -2, 0.7]
    chain = sum((w * xi for w, xi in zip(mws, mx)), mb)
    (chain * 3.0).backward()
    assert out.data == chain.data
    assert b.grad == mb.grad == 3.0
    assert [w.grad for w in ws] == [approx(w.grad) for w in mws]
    if xs == "values":
        assert [v.grad for v in x] == [approx(v.grad) for v in mx]


def test_op_custom(Value):
    # a node made by the constructor, with a Python _backward: the lecture's way to add ops
    a, b, c = Value(1.5), Value(-2.0), Value(0.5)
    out = Value(a.data * b.data + c.data, (a, b, c), 'fma')

    def _backward():
        a.grad += b.data * out.grad
        b.grad += a.data * out.grad
        c.grad += out.grad
    out._backward = _backward
    y = out * 3.0
    y.backward()
    assert out._op == 'fma' and out._prev == {a, b, c}
    assert (a.grad, b.grad, c.grad) == (approx(-6.0), approx(4.5), approx(3.0))


def test_custom_without_backward_is_a_dead_end(Value):
    a = Value(2.0)
    out = Value(5.0, (a,), 'opaque')      # micrograd's default _backward does nothing
    out.backward()
    assert (out.grad, a.grad) == (1.0, 0.0)


def test_neg_and_reflected_ops_build_micrograd_graphs(Value):
    a = Value(A)
    assert (-a)._op == '*' and sorted(v.data for v in (-a)._prev) == [-1.0, A]
    assert (a - 2)._op == '+' and sorted(v.data for v in (a - 2)._prev) == [-2.0, A]
    assert (2 - a)._op == '+'
    assert (a / 4)._op == '*' and sorted(v.data for v in (a / 4)._prev) == [0.25, A]
    assert {v._op for v in (4 / a)._prev} == {'**-1', ''}
    assert {v._op for v in (a / a)._prev} == {'**-1', ''}


@pytest.mark.parametrize("f", [
    lambda x: (x * x + 3 * x).tanh(),
    lambda x: (x ** 3 - x / 2).relu() + (2 * x).exp(),
    lambda x: 1 / (1 + (-x).exp()),
])
def test_finite_differences(Value, f):
    x0, h = 0.37, 1e-6
    x = Value(x0)
    y = f(x)
    y.backward()
    numeric = (f(Value(x0 + h)).data - f(Value(x0 - h)).data) / (2 * h)
    assert x.grad == pytest.approx(numeric, rel=1e-7, abs=1e-9)


# --- beyond micrograd: log, sigmoid, sqrt, abs, Value ** Value --------------------------

def finite_difference(f, x, eps=1e-6):
    return (f(x + eps) - f(x - eps)) / (2 * eps)


def check_unary(Value, name, x, value, grad):
    """op(x) against its closed form, and its grad against the closed form and a central
    finite difference of the float function."""
    a = Value(x)
    out = getattr(a, name)() if name != "abs" else abs(a)
    out.backward()
    assert out.data == approx(value)
    assert a.grad == approx(grad)
    assert out._op == name and out._prev == {a}


@pytest.mark.parametrize("x", [0.3, 1.0, 2.5, 1e-300, 1e300])
def test_op_log(Value, x):
    check_unary(Value, "log", x, math.log(x), 1 / x)
    if 1e-3 < x < 1e3:
        assert 1 / x == pytest.approx(finite_difference(math.log, x), rel=1e-7)


@pytest.mark.parametrize("x", [0.0, -1.0, -math.inf])
def test_log_outside_its_domain_raises_as_math_log(Value, x):
    # the same message as this Python's math.log ('math domain error' up to 3.13,
    # 'expected a positive input, got 0.0' from 3.14)
    with pytest.raises(ValueError) as ours:
        Value(x).log()
    with pytest.raises(ValueError) as theirs:
        math.log(x)
    assert str(ours.value) == str(theirs.value)


def sigmoid(x):
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


@pytest.mark.parametrize("x", [0.0, 0.7, -2.3, 30.0, -30.0, 1000.0, -1000.0])
def test_op_sigmoid(Value, x):
    s = sigmoid(x)
    check_unary(Value, "sigmoid", x, s, s * (1 - s))
    if abs(x) < 50:
        assert s * (1 - s) == pytest.approx(finite_difference(sigmoid, x), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("x", [0.25, 2.0, 1e10])
def test_op_sqrt(Value, x):
    check_unary(Value, "sqrt", x, math.sqrt(x), 0.5 / math.sqrt(x))
    assert 0.5 / math.sqrt(x) == pytest.approx(finite_difference(math.sqrt, x, eps=x * 1e-6), rel=1e-6)


def test_sqrt_at_zero_and_below(Value):
    a = Value(0.0)
    out = a.sqrt()
    out.backward()
    assert (out.data, a.grad) == (0.0, math.inf)     # IEEE: 1 / (2 * 0)
    for x in (-1.0, -math.inf):
        with pytest.raises(ValueError) as ours:
            Value(x).sqrt()
        with pytest.raises(ValueError) as theirs:
            math.sqrt(x)
        assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("x, grad", [(2.5, 1.0), (-2.5, -1.0), (0.0, 0.0), (-0.0, 0.0)])
def test_op_abs(Value, x, grad):
    check_unary(Value, "abs", x, abs(x), grad)


def test_op_powv(Value):
    for base, exponent in [(1.7, 0.6), (0.3, -2.5), (2.0, 3.0), (1e-3, 0.5)]:
        a, b = Value(base), Value(exponent)
        out = a ** b
        out.backward()
        assert out.data == approx(base ** exponent)
        assert a.grad == approx(exponent * base ** (exponent - 1))
        assert b.grad == approx(base ** exponent * math.log(base))
        assert b.grad == pytest.approx(finite_difference(lambda e: base ** e, exponent), rel=1e-6)
        assert out._op == '**' and out._prev == {a, b}
    b = Value(0.5)
    out = 2 ** b                                     # a number base becomes a leaf
    out.backward()
    assert out.data == approx(2 ** 0.5) and b.grad == approx(2 ** 0.5 * math.log(2))
    assert sorted(c.data for c in out._prev) == [0.5, 2.0]


@pytest.mark.parametrize("base", [0.0, -2.0, -0.0])
def test_powv_needs_a_positive_base(Value, base):
    a, b = Value(base), Value(0.5)
    with pytest.raises(ValueError, match="positive"):
        a ** b
    with pytest.raises(ValueError, match="positive"):
        base ** b
    assert a.grad == b.grad == 0.0


def test_powv_overflow_like_float(Value):
    with pytest.raises(OverflowError):
        Value(10.0) ** Value(400.0)


@pytest.mark.parametrize("k, grad", [(0.5, math.nan), (-1.5, math.nan),
                                     (-3, -math.inf), (-2, math.inf)])
def test_pow_rules_at_a_base_assigned_below_zero_are_cs_pow(Value, k, grad):
    # backward reads the base's value when it runs, as micrograd's closures do. Assigned
    # a tiny negative number, a fractional power's derivative is C's pow there, nan
    # (Python's ** gives a complex number, or for k = -1.5 complex pow's OverflowError),
    # and an integer power's overflows to the infinity of its sign (found by the fuzz
    # target, after an Adam step took a base below 0)
    x = Value(4.0)
    y = x ** k
    x.data = -1e-300
    y.backward()
    assert x.grad == grad or (math.isnan(grad) and math.isnan(x.grad))
    a, b = Value(4.0), Value(float(k))
    y = a ** b
    a.data = -1e-300
    y.backward()
    assert a.grad == grad or (math.isnan(grad) and math.isnan(a.grad))
    assert math.isnan(b.grad)                       # y.data * log(a), log of a negative


def test_new_ops_against_torch(Value):
    torch = pytest.importorskip("torch")

    def f(x, y, log, sigmoid, sqrt):
        return log(sigmoid(x * y) + sqrt(abs(y))) * x ** y + sigmoid(-x) ** 2

    xs, ys = 1.3, 0.7
    x, y = Value(xs), Value(ys)
    out = f(x, y, Value.log, Value.sigmoid, Value.sqrt)
    out.backward()
    tx = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    ty = torch.tensor(ys, dtype=torch.float64, requires_grad=True)
    tout = f(tx, ty, torch.log, torch.sigmoid, torch.sqrt)
    tout.backward()
    assert out.data == approx(tout.item())
    assert (x.grad, y.grad) == (approx(tx.grad.item()), approx(ty.grad.item()))
