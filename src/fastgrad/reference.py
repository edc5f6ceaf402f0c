"""The pure-Python reference engine: micrograd's Value with fastgrad's semantics.

It is the contract the compiled engine is tested against, the fallback when the extension
is not built, and the baseline of the benchmark suite. Backward rules are keyed by the op
codes of fastgrad.ops; ordering is iterative, so deep graphs work here too.
"""
import math
import threading

from fastgrad.ops import SYMBOL, Op, pow_symbol


def _as_real(x):
    """float(x) for numbers (what PyFloat_AsDouble accepts), None for anything else."""
    if type(x) is float:
        return x
    if isinstance(x, (int, float)):
        return float(x)
    t = type(x)
    if not (hasattr(t, '__float__') or hasattr(t, '__index__')):
        return None
    try:
        return float(x.__float__() if hasattr(t, '__float__') else x.__index__())
    except TypeError:
        return None


_NO_OPSTR = object()   # `_opstr` of a node whose `_op` comes from its op code


def _is_empty(s):
    # the constructor's '' defaults; any other object (even one whose == is odd) is kept
    return type(s) is str and not s


def _real_or_raise(x, what):
    r = _as_real(x)
    if r is None:
        raise TypeError(f"{what} must be a real number, not {type(x).__name__!r}")
    return r


def _complex_power(a, k):
    """Whether a ** k is a negative number to a fractional power: complex in Python (or
    complex pow's OverflowError, for a tiny base), nan from C's pow."""
    return a < 0.0 and math.isfinite(a) and math.isfinite(k) and k != math.floor(k)


def _pow_ieee(a, k):
    """a ** k as C's pow computes it: inf or nan where Python would raise or go complex."""
    if _complex_power(a, k):
        return math.nan
    try:
        return a ** k
    except ZeroDivisionError:              # 0 ** negative
        odd = k == math.floor(k) and k % 2 == 1
        return math.copysign(math.inf, a) if odd else math.inf
    except OverflowError:
        odd = k == math.floor(k) and k % 2 == 1
        return -math.inf if a < 0 and odd else math.inf


def _div_ieee(x, y):
    """x / y as C divides: inf or nan where Python would raise ZeroDivisionError."""
    try:
        return x / y
    except ZeroDivisionError:
        if x == 0.0 or math.isnan(x):
            return math.nan
        return math.copysign(math.inf, x) * math.copysign(1.0, y)


def _log_ieee(a):
    """log(a) as C computes it: -inf at 0, nan below."""
    if a > 0.0 or math.isnan(a):
        return math.log(a)
    return -math.inf if a == 0.0 else math.nan


# One block per op: its forward, value = forward(k, *children's values) with k the op's
# constant (POW's exponent; the others ignore it), beside its rule (ops.DERIVATIVE),
# which adds (local derivative) * out.grad into each child of node `out`. Both tables are keyed by
# the op codes of fastgrad.ops; the operators build nodes through FORWARD, and recompute()
# re-evaluates through it.

def _add_forward(k, a, b):
    return a + b


def _add_rule(out):
    a, b = out._children
    a._grad += out._grad
    b._grad += out._grad


def _mul_forward(k, a, b):
    return a * b


def _mul_rule(out):
    a, b = out._children
    a._grad += b._data * out._grad
    b._grad += a._data * out._grad


def _pow_forward(k, a):
    """a ** k with Python's float semantics, except that a complex result is an error."""
    k = float(k)
    if _complex_power(a, k):
        raise ValueError(f"negative number {a!r} cannot be raised to a fractional power {k!r}")
    try:
        return a ** k
    except OverflowError:
        raise OverflowError(f"{a!r} ** {k!r}: numerical result out of range") from None


def _pow_rule(out):
    a, = out._children
    k = out._k
    a._grad += (k * _pow_ieee(a._data, k - 1.0)) * out._grad


def _relu_forward(k, a):
    return 0.0 if a < 0 else a


def _relu_rule(out):
    out._children[0]._grad += (out._data > 0) * out._grad


def _tanh_forward(k, a):
    return math.tanh(a)


def _tanh_rule(out):
    t = out._data
    out._children[0]._grad += (1.0 - t * t) * out._grad


def _exp_forward(k, a):
    return math.exp(a)


def _exp_rule(out):
    out._children[0]._grad += out._data * out._grad


def _affine_forward(k, b, *terms):
    # summed left to right: micrograd's sum((w * x ...), b) to the last bit
    acc = b
    for j in range(0, len(terms), 2):
        acc = acc + terms[j] * terms[j + 1]
    return acc


def _affine_rule(out):
    b, *terms = out._children
    g = out._grad
    b._grad += g
    for k in range(0, len(terms), 2):
        w, x = terms[k], terms[k + 1]
        w._grad += x._data * g
        x._grad += w._data * g


def _log_forward(k, a):
    return math.log(a)          # (ValueError for a <= 0)


def _log_rule(out):
    a = out._children[0]
    a._grad += _div_ieee(1.0, a._data) * out._grad


def _sigmoid_forward(k, a):
    # for a < 0 as exp(a) / (1 + exp(a)): no exp overflows
    if a >= 0.0:
        return 1.0 / (1.0 + math.exp(-a))
    e = math.exp(a)
    return e / (1.0 + e)


def _sigmoid_rule(out):
    s = out._data
    out._children[0]._grad += s * (1.0 - s) * out._grad


def _sqrt_forward(k, a):
    return math.sqrt(a)


def _sqrt_rule(out):
    out._children[0]._grad += _div_ieee(1.0, 2.0 * out._data) * out._grad


def _abs_forward(k, a):
    return abs(a)


def _abs_rule(out):
    a = out._children[0]
    sign = a._data if math.isnan(a._data) else float(a._data > 0.0) - float(a._data < 0.0)
    a._grad += sign * out._grad


def _powv_forward(k, a, b):
    if not a > 0.0 and not math.isnan(a):
        raise ValueError(f"the base of Value ** Value must be positive, not {a!r}")
    try:
        return a ** b
    except OverflowError:
        raise OverflowError(f"{a!r} ** {b!r}: numerical result out of range") from None


def _powv_rule(out):
    a, b = out._children
    g = out._grad
    a._grad += b._data * _pow_ieee(a._data, b._data - 1.0) * g
    b._grad += out._data * _log_ieee(a._data) * g


class _Scaled(tuple):
    """The derivatives of a LOCAL node whose value is its sum times the constant `scale`
    (the compiled engine's SCALED_ROW: attention's logits over hd ** 0.5). They are the
    sum's, and the rule first multiplies the node's grad by scale, as the '*' node of
    mul(linear(...), scale) would before handing it on."""


class _ReluRow(tuple):
    """The derivatives of a LOCAL node whose value is the ReLU of its sum (the compiled
    engine's RELU_ROW: linear(..., relu=True)). They are the sum's, and the rule first
    multiplies the node's grad by the ReLU's derivative at the node's value then, as the
    ReLU node of relu(linear(...)) would (_relu_rule) before handing it on."""


def _row_gate(out):
    # what a scaled or ReLU row (its _k not a plain tuple) multiplies its grad by before
    # its derivatives
    if type(out._k) is _Scaled:
        return out._k.scale
    return float(out._data > 0)


def _local_rule(out):
    # LOCAL: the derivatives it was made with (out._k), one per child
    g = out._grad
    if type(out._k) is not tuple:
        g = _row_gate(out) * g
    for c, d in zip(out._children, out._k):
        c._grad += d * g


def _local_grads_of(out):
    if type(out._k) is not tuple:
        gate = _row_gate(out)
        return tuple(d * gate for d in out._k)
    return out._k


def _no_rule(out):
    # LEAF; CUSTOM, whose rule is its Python _backward if it has one
    pass


FORWARD = {
    Op.ADD: _add_forward,
    Op.MUL: _mul_forward,
    Op.POW: _pow_forward,
    Op.RELU: _relu_forward,
    Op.TANH: _tanh_forward,
    Op.EXP: _exp_forward,
    Op.AFFINE: _affine_forward,
    Op.LOG: _log_forward,
    Op.SIGMOID: _sigmoid_forward,
    Op.SQRT: _sqrt_forward,
    Op.ABS: _abs_forward,
    Op.POWV: _powv_forward,
}

RULES = {
    Op.LEAF: _no_rule,
    Op.ADD: _add_rule,
    Op.MUL: _mul_rule,
    Op.POW: _pow_rule,
    Op.RELU: _relu_rule,
    Op.TANH: _tanh_rule,
    Op.EXP: _exp_rule,
    Op.CUSTOM: _no_rule,
    Op.AFFINE: _affine_rule,
    Op.LOG: _log_rule,
    Op.SIGMOID: _sigmoid_rule,
    Op.SQRT: _sqrt_rule,
    Op.ABS: _abs_rule,
    Op.POWV: _powv_rule,
    Op.LOCAL: _local_rule,
}


def _affine_local_grads(out):
    b, *terms = out._children
    grads = [1.0]
    for k in range(0, len(terms), 2):
        grads += [terms[k + 1]._data, terms[k]._data]
    return tuple(grads)


# The local derivatives each rule above multiplies out.grad by, one per child in the order
# of out._children: what microgpt's Value holds as _local_grads (GptValue._local_grads).
# tests/test_microgpt.py checks every op's entry against its rule.
LOCAL_GRADS = {
    Op.LEAF: lambda out: (),
    Op.ADD: lambda out: (1.0, 1.0),
    Op.MUL: lambda out: (out._children[1]._data, out._children[0]._data),
    Op.POW: lambda out: (out._k * _pow_ieee(out._children[0]._data, out._k - 1.0),),
    Op.RELU: lambda out: (float(out._data > 0),),
    Op.TANH: lambda out: (1.0 - out._data * out._data,),
    Op.EXP: lambda out: (out._data,),
    Op.CUSTOM: lambda out: (0.0,) * len(out._children),
    Op.AFFINE: _affine_local_grads,
    Op.LOG: lambda out: (_div_ieee(1.0, out._children[0]._data),),
    Op.SIGMOID: lambda out: (out._data * (1.0 - out._data),),
    Op.SQRT: lambda out: (_div_ieee(1.0, 2.0 * out._data),),
    Op.ABS: lambda out: (lambda a: (a if math.isnan(a) else float(a > 0.0) - float(a < 0.0),))(
        out._children[0]._data),
    Op.POWV: lambda out: (
        out._children[1]._data * _pow_ieee(out._children[0]._data, out._children[1]._data - 1.0),
        out._data * _log_ieee(out._children[0]._data)),
    Op.LOCAL: _local_grads_of,
}


_POW = Op.POW


def _forward(code):
    forward = FORWARD.get(code)
    if forward is None:
        raise NotImplementedError(f"no forward for op {Op(code).name}")
    return forward


def _rule(code):
    rule = RULES.get(code)
    if rule is None:
        raise NotImplementedError(f"no backward rule for op {Op(code).name}")
    return rule


class _GradMode(threading.local):
    enabled = True          # per thread: do ops record graphs (off under no_grad)


_mode = _GradMode()


def _set_grad_enabled(mode):
    was = _mode.enabled
    _mode.enabled = bool(mode)
    return was


def _is_grad_enabled():
    return _mode.enabled


def _mixed_kinds(a, b):
    return TypeError(
        f"cannot combine a {type(a).__module__}.{type(a).__name__} with a "
        f"{type(b).__module__}.{type(b).__name__}: a graph is built from one Value class")


def _op_string(v):
    # the node's `_op` as a message shows it (a microgpt-style handle has no `_op`)
    if v._opstr is not _NO_OPSTR:
        return v._opstr
    return pow_symbol(v._k) if v._code == Op.POW else SYMBOL[v._code]


class _Handle:
    """What Value (micrograd's API) and GptValue (microgpt's) share: data, grad, the
    operators, the ops and backward(). A graph is built from one of them."""
    __slots__ = ('_data', '_grad', '_children', '_code', '_k', '_opstr', '_fn', '_label')

    @classmethod
    def _node(cls, code, data, children):
        # the ops' constructor: no argument checks, they were done by the operator; under
        # no_grad a leaf holding the value
        if not _mode.enabled:
            code, children = Op.LEAF, ()
        out = cls.__new__(cls)
        out._data = data
        out._grad = 0.0
        out._children = children
        out._code = code
        out._k = 0.0
        out._opstr = _NO_OPSTR
        out._fn = None
        out._label = ''
        return out

    @classmethod
    def _op_node(cls, code, children, k=0.0):
        # a node of a built-in op: its value from FORWARD, then as _node (the arities are
        # spelled out: this is every operator's hot path)
        try:
            forward = FORWARD[code]
        except KeyError:
            _forward(code)                      # raises, naming the op
        if len(children) == 2:
            data = forward(k, children[0]._data, children[1]._data)
        elif len(children) == 1:
            data = forward(k, children[0]._data)
        else:
            data = forward(k, *[c._data for c in children])
        out = cls._node(code, data, children)
        if code is _POW and out._code is _POW:
            out._k = k
        return out

    # --- attributes -----------------------------------------------------------------

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        self._data = _real_or_raise(value, "data")

    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, value):
        self._grad = _real_or_raise(value, "grad")

    # --- operators (micrograd builds the same graph) ---------------------------------

    def _binary(self, code, other):
        if type(other) is type(self):
            x = other._data
        else:
            x = _as_real(other)
            if x is None:
                if isinstance(other, _Handle):
                    raise _mixed_kinds(self, other)
                return NotImplemented
            other = self._node(Op.LEAF, x, ())
        return self._op_node(code, (self, other))

    def __add__(self, other):
        return self._binary(Op.ADD, other)

    def __radd__(self, other): # other + self
        return self._binary(Op.ADD, other)

    def __mul__(self, other):
        return self._binary(Op.MUL, other)

    def __rmul__(self, other): # other * self
        return self._binary(Op.MUL, other)

    def __pow__(self, other, mod=None):
        # self ** k for an int or float k (micrograd's op, '**k'); self ** Value (POWV)
        if mod is not None:
            raise TypeError("pow() with a modulus is not supported for Value")
        if type(other) is type(self):
            return self._op_node(Op.POWV, (self, other))
        if isinstance(other, _Handle):
            raise _mixed_kinds(self, other)
        if not isinstance(other, (int, float)):
            raise TypeError(f"unsupported exponent type {type(other).__name__!r}: "
                            "int, float or Value")
        # k kept as given, so that `_op` shows '**2', '**2.0' or '**True'; a subclass
        # (numpy's float64) as its plain value, as the compiled engine keeps it, so that
        # the grads it makes are floats
        if type(other) is not int and type(other) is not float and type(other) is not bool:
            other = float(other) if isinstance(other, float) else int(other)
        return self._op_node(Op.POW, (self,), other)

    def __rpow__(self, other, mod=None):
        # number ** self: the number becomes a leaf, as in every binary op
        if mod is not None:
            raise TypeError("pow() with a modulus is not supported for Value")
        if not isinstance(other, (int, float)):
            return NotImplemented
        return type(self)(other) ** self

    def relu(self):
        return self._op_node(Op.RELU, (self,))

    def tanh(self):
        return self._op_node(Op.TANH, (self,))

    def exp(self):
        return self._op_node(Op.EXP, (self,))

    def log(self):
        return self._op_node(Op.LOG, (self,))

    def sigmoid(self):
        return self._op_node(Op.SIGMOID, (self,))

    def sqrt(self):
        return self._op_node(Op.SQRT, (self,))

    def __abs__(self):
        return self._op_node(Op.ABS, (self,))

    def __neg__(self): # -self
        return self * -1

    def __sub__(self, other): # self - other
        return self + (-other)

    def __rsub__(self, other): # other - self
        return other + (-self)

    def __truediv__(self, other): # self / other
        return self * other**-1

    def __rtruediv__(self, other): # other / self
        return other * self**-1

    def _topo(self):
        # depth-first with an explicit stack (no recursion): children before parents
        topo = []
        visited = set()
        stack = [(self, False)]
        while stack:
            v, expanded = stack.pop()
            if expanded:
                topo.append(v)
            elif v not in visited:
                visited.add(v)
                stack.append((v, True))
                stack.extend((c, False) for c in v._children if c not in visited)
        return topo

    def recompute(self):
        """Re-evaluates every node under this one from the current data of the leaves, and
        resets the grads of the nodes in between to 0 (leaves keep theirs): as if the same
        expression had been built again. What it needs is cached per root, so a training
        loop can build its graph once, then recompute() / backward() / update the leaves,
        step after step. All or nothing: if an op fails, every value is put back. A graph
        holding Python code (a custom op, an assigned _backward) is refused with TypeError."""
        topo = self._topo()
        for v in topo:
            if (v._code == Op.CUSTOM and v._children) or v._fn is not None:
                raise TypeError(
                    f"recompute() cannot re-evaluate the custom op {_op_string(v)!r}: "
                    "its value or its _backward is Python code; rebuild the graph instead")
            if v._code == Op.LOCAL:
                raise TypeError(
                    "recompute() cannot re-evaluate a node made with its local gradients "
                    "(Value(data, children, local_grads), or a fastgrad.functional helper): "
                    "they are constants of the values it was made from; rebuild the graph instead")
        new = {}                                # all or nothing: commit once all succeeded
        value = lambda c: new.get(c, c._data)
        for v in topo:
            if v._code != Op.LEAF and v._code != Op.CUSTOM:  # (LOCAL refused above)
                new[v] = _forward(v._code)(v._k, *map(value, v._children))
        for v, d in new.items():
            v._data = d
            v._grad = 0.0

    def backward(self):
        topo = self._topo()
        # sweep: each node's local chain rule, parents before children
        self._grad = 1.0
        for v in reversed(topo):
            if v._fn is not None:
                v._fn()
            else:
                _rule(v._code)(v)

    def __repr__(self):
        return f"Value(data={self.data}, grad={self.grad})"


def _not_a_base(kind):
    # Value and GptValue are final, as the compiled engine's are: the ops make nodes of
    # the operand's own class, and a node's children must be of that class
    return TypeError(f"type '{kind.__module__}.{kind.__qualname__}' "
                     "is not an acceptable base type")


class Value(_Handle):
    """ stores a single scalar value and its gradient """
    __slots__ = ()

    def __init_subclass__(cls, **kwargs):
        raise _not_a_base(Value)

    def __init__(self, data, _children=(), _op='', label=''):
        self._data = _real_or_raise(data, "Value data")
        self._grad = 0.0
        self._children = tuple(_children)
        for c in self._children:
            if type(c) is not Value:
                raise TypeError(f"children of a Value must be Values, not {type(c).__name__!r}")
        self._code = Op.CUSTOM if (self._children or not _is_empty(_op)) else Op.LEAF
        self._k = 0.0
        self._opstr = _NO_OPSTR if _is_empty(_op) else _op
        self._fn = None
        self._label = label

    @property
    def label(self):
        return self._label

    @label.setter
    def label(self, value):
        self._label = value

    @property
    def _op(self):
        return _op_string(self)

    @_op.setter
    def _op(self, value):
        self._opstr = value

    @property
    def _prev(self):
        return set(self._children)

    @property
    def _backward(self):
        if self._fn is not None:
            return self._fn
        return self._apply_rule

    @_backward.setter
    def _backward(self, fn):
        # micrograd's backward() calls whatever _backward a node holds: a function
        # assigned to any node replaces its op's rule (and recompute() then refuses its
        # graph); the node's own rule, read from _backward and assigned back, restores it
        if not callable(fn):
            raise TypeError(f"_backward must be callable, not {type(fn).__name__!r}")
        own = getattr(fn, "__self__", None) is self and getattr(fn, "__name__", None) == "_apply_rule"
        self._fn = None if own else fn

    def _apply_rule(self):
        """Applies the local chain rule of this node's op once (what micrograd's _backward
        of the op does); a custom op has none."""
        _rule(self._code)(self)

    @staticmethod
    def _sum_of_products(start, ws, xs):
        """start + ws[0] * xs[0] + ws[1] * xs[1] + ...: the chain of '*' and '+' nodes that
        sum((w * x for w, x in zip(ws, xs)), start) builds, made in one call."""
        act = start
        for wi, xi in zip(ws, xs):
            act = act + wi * xi
        return act

    @staticmethod
    def _affine(start, ws, xs):
        """start + ws[0] * xs[0] + ws[1] * xs[1] + ... as one node (op 'affine', children
        start, ws and xs): the value and grads of micrograd's chain, in one node."""
        ws, xs = list(ws), list(xs)
        n = min(len(ws), len(xs))
        fast = type(start) is Value and all(
            type(w) is Value and (type(x) is Value or isinstance(x, (int, float)))
            for w, x in zip(ws, xs))
        if not fast:
            return Value._sum_of_products(start, ws, xs)
        if n == 0:
            return start
        children = [start]
        for w, x in zip(ws, xs):
            children += [w, x if type(x) is Value else Value._node(Op.LEAF, float(x), ())]
        return Value._op_node(Op.AFFINE, tuple(children))

    def __reduce__(self):
        if self._code != Op.LEAF:
            raise TypeError("only leaf Values can be pickled or copied (a graph node would lose its children)")
        return (_restore, (self._data, self._grad, self._label))


class GptValue(_Handle):
    """ stores a single scalar value and its gradient (microgpt's API) """
    __slots__ = ()

    def __init_subclass__(cls, **kwargs):
        raise _not_a_base(GptValue)

    def __init__(self, data, children=(), local_grads=()):
        # microgpt's constructor: a node with children carries one local derivative
        # (d self / d child) per child, fixed here
        data = _real_or_raise(data, "Value data")
        children = tuple(children)
        for c in children:
            if type(c) is not GptValue:
                raise TypeError(f"children of a Value must be Values, not {type(c).__name__!r}")
        grads = tuple(local_grads)
        if len(grads) != len(children):
            raise ValueError(f"a Value needs one local gradient per child: got {len(children)} "
                             f"children and {len(grads)} local_grads")
        grads = tuple(_real_or_raise(d, "a local gradient") for d in grads)
        self._data = data
        self._grad = 0.0
        self._children = children
        self._code = Op.LOCAL if children else Op.LEAF
        self._k = grads
        self._opstr = _NO_OPSTR
        self._fn = None
        self._label = ''

    @property
    def _local_grads(self):
        """d self / d child for each of _children: the constants it was made with, or for
        an operator's node its op's local derivatives (at the current values)."""
        return LOCAL_GRADS[self._code](self)

    def __reduce__(self):
        if self._code != Op.LEAF:
            raise TypeError("only leaf Values can be pickled or copied (a graph node would lose its children)")
        return (_restore_gpt, (self._data, self._grad))


# ------------------------------------------------------------------ fused helpers
# fastgrad.functional's layers on this engine: LOCAL nodes with the values of the list
# expressions they stand for, operation for operation (as the compiled engine's, in
# _core_fused.pxi), and their local derivatives computed from the values at hand.

def _local_node(kind, data, children, grads):
    out = kind._node(Op.LOCAL, data, tuple(children))
    if out._code is Op.LOCAL:                   # (under no_grad a leaf)
        out._k = tuple(grads)
    return out


def _handle_class(v, what):
    if isinstance(v, _Handle):
        return type(v)
    raise TypeError(f"{what} must be Values, not {type(v).__name__!r}")


def _check_handles(vs, kind, what):
    for v in vs:
        if type(v) is not kind:
            if isinstance(v, _Handle):
                raise _mixed_kinds(vs[0], v)
            raise TypeError(f"{what} must be Values, not {type(v).__name__!r}")


class Matrix:
    """fastgrad._core.Matrix's twin: rows of Values packed for linear(), with the same
    checks. Here it is only its rows (a tuple of tuples), which _linear reads as any
    rows."""
    __slots__ = ('_rows', '_kind')

    def __init__(self, rows):
        rows = tuple(tuple(row) for row in rows)
        if not rows:
            raise ValueError("a Matrix needs at least one row")
        n = len(rows[0])
        if n == 0:
            raise ValueError("a Matrix's rows need at least one Value")
        for r, row in enumerate(rows):
            if len(row) != n:
                raise ValueError(f"Matrix: row {r} has {len(row)} Values, but row 0 has {n}")
        first = rows[0][0]
        kind = _handle_class(first, "a Matrix's entries")
        for row in rows:
            for v in row:
                if type(v) is not kind:
                    if isinstance(v, _Handle):
                        raise _mixed_kinds(first, v)
                    raise TypeError(f"a Matrix's entries must be Values, not {type(v).__name__!r}")
        self._rows, self._kind = rows, kind

    @property
    def rows(self):
        return self._rows

    @property
    def shape(self):
        return (len(self._rows), len(self._rows[0]))

    def __len__(self):
        return len(self._rows)

    def __getitem__(self, r):
        return self._rows[r]

    def __iter__(self):
        return iter(self._rows)

    def __repr__(self):
        return f"Matrix({len(self._rows)} x {len(self._rows[0])} of {self._kind.__name__})"

    def __reduce__(self):
        return (Matrix, (self._rows,))


def _ragged_row(r, weights, n):
    return ValueError(f"linear: row {r} of w has {weights} weights, but x has {n} values")


def _linear(x, w, bias=None, relu=False):
    if type(relu) is not bool:
        raise TypeError(f"linear's relu must be True or False, not {type(relu).__name__!r}")
    # Read in the compiled engine's order, which matters where a number of x runs code
    # (its __float__) that changes the caller's lists: x is a copy, read first, each
    # number once; list rows are the caller's own lists, read after x (other rows, and
    # every row given a bias, are copies made before).
    xs = list(x)
    bs = None if bias is None else list(bias)
    rows = [r if type(r) is list else list(r) for r in w]
    n = len(xs)
    for r, row in enumerate(rows):
        if len(row) != n:
            raise _ragged_row(r, len(row), n)
    if bs is not None and len(bs) != len(rows):
        raise ValueError(f"linear: bias has {len(bs)} values, but w has {len(rows)} rows")
    if not rows:
        return []
    if n == 0:
        raise ValueError("linear: x is empty (a row needs at least one weight)")
    first = rows[0][0]
    kind = _handle_class(first, "linear's weights")
    if bs is not None:
        # each row's bias is one more weight, times a 1.0 in x (as the compiled engine)
        _check_handles(bs, kind, "linear's bias")
        xs.append(1.0)
        rows = [row + [b] for row, b in zip(rows, bs)]
    xval = []
    for v in xs:
        real = v._data if type(v) is kind else _as_real(v)
        if real is None:
            if isinstance(v, _Handle):
                raise _mixed_kinds(first, v)
            raise TypeError(f"linear's x must be Values or numbers, not {type(v).__name__!r}")
        xval.append(real)
    for r, row in enumerate(rows):
        if len(row) != len(xs):             # (again: x's numbers may have changed it)
            raise _ragged_row(r, len(row), len(xs))
        _check_handles(row, kind, "linear's weights")
    xs = [v if type(v) is kind else kind._node(Op.LEAF, xv, ()) for v, xv in zip(xs, xval)]
    out = []
    for row in rows:
        acc = 0.0                   # sum() starts at 0: 0 + w0*x0 is w0*x0 + 0.0
        children, grads = [], []
        for wi, xi, xv in zip(row, xs, xval):
            acc = acc + wi._data * xv
            children += [wi, xi]
            grads += [xv, wi._data]
        if relu:
            # relu(sum) in the row's node: the ReLU's value, and the sum's derivatives,
            # which the rule multiplies by the ReLU's at the node's value (_ReluRow)
            acc = _relu_forward(None, acc)
        row = _local_node(kind, acc, children, grads)
        if relu and row._code is Op.LOCAL:
            row._k = _ReluRow(row._k)
        out.append(row)
    return out


def _rmsnorm(x, eps):
    xs = list(x)
    e = _real_or_raise(eps, "eps")
    if not xs:
        raise ValueError("rmsnorm of an empty list")
    kind = _handle_class(xs[0], "rmsnorm's x")
    _check_handles(xs, kind, "rmsnorm's x")
    total = 0.0
    for v in xs:
        total = total + v._data * v._data
    inv_n = _pow_forward(-1.0, float(len(xs)))     # x / len(x) is x * len(x) ** -1
    u = total * inv_n + e
    scale = _pow_forward(-0.5, u)
    if _mode.enabled:
        c = (-0.5 * _pow_ieee(u, -1.5)) * inv_n
        scale_node = _local_node(kind, scale, xs, [2.0 * v._data * c for v in xs])
        return [kind._node(Op.MUL, v._data * scale, (v, scale_node)) for v in xs]
    return [kind._node(Op.LEAF, v._data * scale, ()) for v in xs]


def _check_logits(xs, what):
    if not xs:
        raise ValueError(f"{what} of an empty list of logits")
    _check_handles(xs, _handle_class(xs[0], "logits"), "logits")


def _shifted_exps(xs):
    # exp(x - max(x)) for each logit (x - m is x + (-m)), and their sum started at 0
    m = max(v._data for v in xs)
    exps = [_exp_forward(None, v._data + (-m)) for v in xs]
    total = 0.0
    for e in exps:
        total = total + e
    return m, exps, total


def _softmax(logits):
    xs = list(logits)
    _check_logits(xs, "softmax")
    kind = type(xs[0])
    m, exps, total = _shifted_exps(xs)
    r = _pow_forward(-1.0, total)         # e / total is e * total ** -1
    if not _mode.enabled:
        return [kind._node(Op.LEAF, e * r, ()) for e in exps]
    t = _local_node(kind, total, xs, exps)
    dr = -1.0 * _pow_ieee(total, -2.0)
    return [_local_node(kind, e * r, (v, t), (r * e, e * dr)) for v, e in zip(xs, exps)]


def _cross_entropy(logits, target):
    xs = list(logits)
    _check_logits(xs, "cross_entropy")
    m, exps, total = _shifted_exps(xs)
    loss = _log_forward(None, total) - (xs[target]._data + (-m))
    inv = _div_ieee(1.0, total)
    grads = [e * inv - (1.0 if k == target else 0.0) for k, e in enumerate(exps)]
    return _local_node(type(xs[0]), loss, xs, grads)


def _attention(q, keys, values, n_head):
    # microgpt's attention of one position, head by head, as the compiled engine's
    # attention_layer: the layers it stands for, with the same checks first
    qs = list(q)
    if n_head < 1:                      # (an int: functional.attention checks its type)
        raise ValueError(f"attention: n_head must be at least 1, not {n_head}")
    if not qs:
        raise ValueError("attention: q is empty")
    if len(qs) % n_head:
        raise ValueError(f"attention: q's {len(qs)} values do not split into {n_head} heads")
    ks, vs = [list(k) for k in keys], [list(v) for v in values]
    if not ks:
        raise ValueError("attention over no keys")
    if len(vs) != len(ks):
        raise ValueError(f"attention: {len(ks)} keys but {len(vs)} values")
    for t, (k, v) in enumerate(zip(ks, vs)):
        if len(k) != len(qs):
            raise ValueError(f"attention: key {t} has {len(k)} values, but q has {len(qs)}")
        if len(v) != len(qs):
            raise ValueError(f"attention: value {t} has {len(v)} values, but q has {len(qs)}")
    kind = _handle_class(qs[0], "attention's q")
    _check_handles(qs, kind, "attention's q")
    for k, v in zip(ks, vs):
        _check_handles(k, kind, "attention's keys")
        _check_handles(v, kind, "attention's values")
    hd = len(qs) // n_head
    c = _pow_forward(-1.0, _pow_forward(0.5, float(hd)))  # s / hd ** 0.5 is s * (hd ** 0.5) ** -1
    out = []
    for lo in range(0, len(qs), hd):
        logits = _linear(qs[lo:lo + hd], [k[lo:lo + hd] for k in ks])
        for s in logits:                # mul(logits, c), in the logits' nodes
            s._data = s._data * c
            if s._code is Op.LOCAL:
                s._k = _Scaled(s._k)
                s._k.scale = c
        weights = _softmax(logits)
        out += _linear(weights, [[v[lo + j] for v in vs] for j in range(hd)])
    return out


class _Params:
    """The optimizers' kernels over a list of Values (fastgrad.optim), in Python."""

    def __init__(self, params):
        self.values = list(params)
        self.m = [0.0] * len(self.values)
        self.v = [0.0] * len(self.values)

    def zero_grad(self):
        for p in self.values:
            p.grad = 0.0

    def sgd(self, lr):
        for p in self.values:
            p.data -= lr * p.grad     # micrograd's update

    def moments(self):
        """Adam's moments, (first, second), a list of floats each, one per parameter."""
        return list(self.m), list(self.v)

    def set_moments(self, m, v):
        """Sets Adam's moments from two sequences of numbers, one per parameter; a
        ValueError or TypeError leaves them as they were."""
        m, v = [float(x) for x in m], [float(x) for x in v]
        if len(m) != len(self.values) or len(v) != len(self.values):
            raise ValueError(f"moments for {len(m)} and {len(v)} parameters, "
                             f"not {len(self.values)}")
        self.m, self.v = m, v

    def adam(self, lr, beta1, beta2, eps, weight_decay, step):
        step_size = lr / (1.0 - beta1 ** step)
        correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
        for k, p in enumerate(self.values):
            g = p.grad + weight_decay * p.data
            self.m[k] = beta1 * self.m[k] + (1.0 - beta1) * g
            self.v[k] = beta2 * self.v[k] + (1.0 - beta2) * g * g
            p.data -= step_size * self.m[k] / (math.sqrt(self.v[k]) / correction2_sqrt + eps)


def _restore(data, grad, label):
    """Unpickles a leaf Value."""
    v = Value(data, label=label)
    v.grad = grad
    return v


def _restore_gpt(data, grad):
    """Unpickles a leaf GptValue."""
    v = GptValue(data)
    v.grad = grad
    return v
