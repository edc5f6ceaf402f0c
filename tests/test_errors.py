"""Bad input: a clear exception at the boundary, and the arena as it was."""
import math

import numpy as np
import pytest

import micrograd.engine


@pytest.mark.parametrize("bad", [None, "2.0", [1.0], {}, 1j, object()])
@pytest.mark.parametrize("op", [
    lambda v, x: v + x, lambda v, x: x + v, lambda v, x: v * x, lambda v, x: x * v,
    lambda v, x: v - x, lambda v, x: x - v, lambda v, x: v / x, lambda v, x: x / v,
])
def test_non_numeric_operands(Value, bad, op):
    v = Value(2.0)
    y = v * 3.0
    with pytest.raises(TypeError):
        op(v, bad)
    y.backward()                       # the graph is intact and usable
    assert (y.data, v.grad) == (6.0, 3.0)


@pytest.mark.parametrize("bad", [None, "1.0", [1.0]])
def test_non_numeric_data(Value, bad):
    with pytest.raises(TypeError, match="real number"):
        Value(bad)
    v = Value(1.0)
    with pytest.raises(TypeError):
        v.data = bad
    with pytest.raises(TypeError):
        v.grad = bad
    assert (v.data, v.grad) == (1.0, 0.0)


def test_children_must_be_values(Value):
    with pytest.raises(TypeError, match="children"):
        Value(1.0, (Value(1.0), 2.0), 'x')


@pytest.mark.parametrize("exponent", ["str", "None", "int64"])
def test_pow_takes_int_float_or_value(Value, exponent):
    # micrograd asserts on anything but int/float; fastgrad also takes a Value (issue 7's
    # Value ** Value, tested in test_ops.py) and raises TypeError for the rest
    v = Value(2.0)
    k = {"str": "2", "None": None, "int64": np.int64(2)}[exponent]
    with pytest.raises(TypeError, match="unsupported exponent type"):
        v ** k
    with pytest.raises(AssertionError):        # micrograd asserts where we raise TypeError
        micrograd.engine.Value(2.0) ** k
    with pytest.raises(TypeError):
        "2" ** v
    with pytest.raises(TypeError):
        pow(v, 2, 3)


def test_zero_to_negative_power(Value):
    with pytest.raises(ZeroDivisionError):
        micrograd.engine.Value(0) ** -1
    with pytest.raises(ZeroDivisionError):
        Value(0) ** -1
    with pytest.raises(ZeroDivisionError):
        Value(1.0) / 0
    with pytest.raises(ZeroDivisionError):
        Value(1.0) / Value(0.0)


def test_fractional_power_of_negative(Value):
    # micrograd would hold a complex number; a Value holds a float, so this is an error
    with pytest.raises(ValueError, match="fractional power"):
        Value(-8.0) ** (1 / 3)


def test_exp_overflow_like_math_exp(Value):
    with pytest.raises(OverflowError):
        math.exp(1000)
    with pytest.raises(OverflowError):
        Value(1000).exp()
    assert Value(math.inf).exp().data == math.inf      # as math.exp(inf)
    assert Value(-1000).exp().data == 0.0


def test_pow_overflow_like_float(Value):
    with pytest.raises(OverflowError):
        10.0 ** 400
    with pytest.raises(OverflowError):
        Value(10.0) ** 400


def test_numpy_and_bool_operands_as_in_micrograd(Value):
    M = micrograd.engine.Value
    cases = [
        lambda V: V(3.0) * np.float64(2.0),
        lambda V: np.float64(2.0) * V(3.0),
        lambda V: V(3.0) + True,
        lambda V: True * V(3.0),
        lambda V: V(3.0) ** True,
        lambda V: V(3.0) ** np.float64(2.0),
        lambda V: V(np.float64(1.5)) - False,
    ]
    for case in cases:
        ours, theirs = case(Value), case(M)
        assert type(ours) is Value
        assert ours.data == theirs.data
        assert ours._op == theirs._op
        ours.backward()
        theirs.backward()
        assert [c.grad for c in sorted(ours._prev, key=lambda c: c.data)] == \
            [c.grad for c in sorted(theirs._prev, key=lambda c: c.data)]
