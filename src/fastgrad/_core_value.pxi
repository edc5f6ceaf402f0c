# The Value handle: a node's Python surface. (Part of _core.pyx.)

cdef void restore_rule(Value h) noexcept:
    """Undoes an assigned _backward: the node's rule is its op's again."""
    cdef node_t i = h.slot
    if not tape.flags[i] & HAS_FN:
        return
    tape.flags[i] &= ~HAS_FN
    if tape.op[i] != CUSTOM:
        tape.overridden -= 1
    if tape.flags[i] & PINNED:          # (h itself is alive: its caller holds it)
        tape.flags[i] &= ~PINNED
        decref(tape.handle[i])
    PyObject_GC_UnTrack(h)              # (no function, no tracking: see dealloc_handle)
    h._fn = None


def _restore(data, grad, label):
    """Unpickles a leaf Value."""
    v = Value(data, label=label)
    v.grad = grad
    return v


cdef class _Handle:
    """A node's handle: what fastgrad.engine.Value (micrograd's API) and
    fastgrad.microgpt.Value (microgpt's) share: the slot, data, grad, the operators, the
    ops and backward(). Each API is a final subclass of the same size, so that both reuse
    the same spare handles (see new_handle); a graph is built from one of them. A dying
    handle lets go of its slot in dealloc_handle."""
    cdef node_t slot
    cdef object _fn     # the Python _backward assigned to this node (Value only), or None

    def __cinit__(self):
        self.slot = -1                  # (a handle no constructor ran on names no node)
        if is_handle_type(Py_TYPE(self)):
            PyObject_GC_UnTrack(self)   # (tracked only while it holds a function: see
                                        # dealloc_handle; a Python subclass's instance
                                        # keeps its type's tracking)

    # --- attributes -----------------------------------------------------------------

    @property
    def data(self):
        return tape.value[check_slot(self)]

    @data.setter
    def data(self, value):
        tape.value[check_slot(self)] = real_or_raise(value, "data")
        tape.epoch += 1

    @property
    def grad(self):
        return tape.grad[check_slot(self)]

    @grad.setter
    def grad(self, value):
        tape.grad[check_slot(self)] = real_or_raise(value, "grad")

    # --- operators (micrograd builds the same graph) ---------------------------------

    def __add__(self, other):
        return binary(ADD, self, other)

    def __radd__(self, other): # other + self
        return binary(ADD, self, other)

    def __mul__(self, other):
        return binary(MUL, self, other)

    def __rmul__(self, other): # other * self
        return binary(MUL, self, other)

    def __pow__(self, other, mod):
        # self ** k for an int or float k (micrograd's op, '**k'); self ** Value (POWV)
        cdef real_t k, r
        cdef _Handle out
        if mod is not None:
            raise TypeError("pow() with a modulus is not supported for Value")
        if type(other) is type(self):
            return power_of_values(self, other)
        if isinstance(other, _Handle):
            raise mixed_kinds(self, other)
        if not isinstance(other, (int, float)):
            raise TypeError(f"unsupported exponent type {type(other).__name__!r}: "
                            "int, float or Value")
        k = other
        pow_forward(tape.value[check_slot(self)], k, &r)
        out = unary(POW, r, self)
        if tape.op[out.slot] == POW:           # (under no_grad it is a leaf)
            tape.param[out.slot].exponent = k
            if PyBool_Check(other):
                tape.flags[out.slot] |= POW_BOOL
            elif PyLong_Check(other):
                tape.flags[out.slot] |= POW_INT
                if fabs(k) >= 9007199254740992.0 and k != other:
                    # (an int beyond 2**53, which the double rounds: `_op` keeps its digits)
                    _opstrs[out.slot] = _pow_symbol(int(other))
                    tape.flags[out.slot] |= HAS_OPSTR
        return out

    def __rpow__(self, other, mod):
        # number ** self: the number becomes a leaf, as in every binary op
        if mod is not None:
            raise TypeError("pow() with a modulus is not supported for Value")
        if not isinstance(other, (int, float)):
            return NotImplemented
        return power_of_values(type(self)(other), self)

    def relu(self):
        return unary(RELU, relu_forward(tape.value[check_slot(self)]), self)

    def tanh(self):
        return unary(TANH, tanh_forward(tape.value[check_slot(self)]), self)

    def exp(self):
        cdef real_t r
        exp_forward(tape.value[check_slot(self)], &r)
        return unary(EXP, r, self)

    def log(self):
        cdef real_t r
        log_forward(tape.value[check_slot(self)], &r)
        return unary(LOG, r, self)

    def sigmoid(self):
        return unary(SIGMOID, sigmoid_forward(tape.value[check_slot(self)]), self)

    def sqrt(self):
        cdef real_t r
        sqrt_forward(tape.value[check_slot(self)], &r)
        return unary(SQRT, r, self)

    def __abs__(self):
        return unary(ABS, abs_forward(tape.value[check_slot(self)]), self)

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

    def backward(self):
        backward_from(check_slot(self))

    def recompute(self):
        """Re-evaluates every node under this one from the current data of the leaves, and
        resets the grads of the nodes in between to 0 (leaves keep theirs): as if the same
        expression had been built again. What it needs is cached per root, so a training
        loop can build its graph once, then recompute() / backward() / update the leaves,
        step after step. All or nothing: if an op fails, every value is put back. A graph
        holding Python code (a custom op, an assigned _backward) is refused with TypeError."""
        recompute_from(check_slot(self))

    def __repr__(self):
        return f"Value(data={self.data}, grad={self.grad})"



@cython.final
cdef class Value(_Handle):
    """ stores a single scalar value and its gradient """

    def __init__(self, data, _children=(), _op='', label=''):
        cdef real_t x = real_or_raise(data, "Value data")
        cdef list kids = list(_children)
        cdef node_t* arr = NULL
        cdef node_t i, n = len(kids)
        for c in kids:
            if type(c) is not Value:
                raise TypeError(f"children of a Value must be Values, not {type(c).__name__!r}")
            check_slot(<Value>c)
        if self.slot >= 0:                     # a handle names one node for life
            raise TypeError("Value.__init__ cannot be called on an existing Value")
        reserve(1)
        if n == 0 and is_empty(_op):
            i = push(LEAF, x, -1, -1)
        else:
            if n > 0:
                safe_realloc(<void**>&arr, n + 1, sizeof(node_t))
                arr[0] = n
                for k in range(n):
                    arr[k + 1] = (<Value>kids[k]).slot
            i = push_above(CUSTOM, x, -1, -1, highest_child(arr))
            tape.flags[i] &= ~DESCENDS         # its rule is Python code: the general sweep
            tape.param[i].kids = arr
            for k in range(n):
                add_ref(arr[k + 1])
        attach(self, i)
        if not is_empty(_op):
            self._op = _op
        if not is_empty(label):
            self.label = label

    @property
    def label(self):
        cdef node_t i = check_slot(self)
        return _labels[i] if tape.flags[i] & HAS_LABEL else ''

    @label.setter
    def label(self, value):
        cdef node_t i = check_slot(self)
        _labels[i] = value
        tape.flags[i] |= HAS_LABEL

    @property
    def _op(self):
        cdef node_t i = check_slot(self)
        cdef real_t k
        if tape.flags[i] & HAS_OPSTR:
            return _opstrs[i]
        if tape.op[i] == POW:
            k = tape.param[i].exponent
            if tape.flags[i] & POW_BOOL:
                return _pow_symbol(k != 0.0)
            if tape.flags[i] & POW_INT:
                return _pow_symbol(int(k))
            return _pow_symbol(k)
        return _SYMBOL[tape.op[i]]

    @_op.setter
    def _op(self, value):
        cdef node_t i = check_slot(self)
        _opstrs[i] = value
        tape.flags[i] |= HAS_OPSTR

    @property
    def _prev(self):
        cdef node_t i = check_slot(self), k
        cdef node_t* kids
        cdef set s = set()
        if has_child_list(tape.op[i]):
            kids = tape.param[i].kids
            if kids != NULL:
                for k in range(1, kids[0] + 1):
                    s.add(handle_of(kids[k], False))
        else:
            if tape.lhs[i] >= 0:
                s.add(handle_of(tape.lhs[i], False))
            if tape.rhs[i] >= 0:
                s.add(handle_of(tape.rhs[i], False))
        return s

    @property
    def _backward(self):
        check_slot(self)
        if tape.flags[self.slot] & HAS_FN:
            return self._fn
        return self._apply_rule

    @_backward.setter
    def _backward(self, fn):
        # micrograd's backward() calls whatever _backward a node holds: a function
        # assigned to any node replaces its op's rule (its graph is then swept by the
        # path that calls Python, and recompute() refuses it); the node's own rule, read
        # from _backward and assigned back, restores it
        cdef node_t i = check_slot(self)
        if not callable(fn):
            raise TypeError(f"_backward must be callable, not {type(fn).__name__!r}")
        if getattr(fn, "__self__", None) is self and getattr(fn, "__name__", None) == "_apply_rule":
            restore_rule(self)
            return
        self._fn = fn
        if not tape.flags[i] & HAS_FN:
            tape.flags[i] |= HAS_FN
            if tape.op[i] != CUSTOM:
                tape.overridden += 1
            forget_replays()            # (a replay cannot call it)
            if tape.op[i] == LEAF:
                forget_orders()         # (an order may leave leaves out: forget_orders)
        if not PyObject_GC_IsTracked(self):
            PyObject_GC_Track(self)
        if tape.refs[i] > 1 and not tape.flags[i] & PINNED:
            pin(i)

    def _apply_rule(self):
        """Applies the local chain rule of this node's op once (what micrograd's _backward
        of the op does); a custom op has none."""
        apply_builtin_rule(check_slot(self))

    @staticmethod
    def _sum_of_products(start, ws, xs):
        """start + ws[0] * xs[0] + ws[1] * xs[1] + ...: the chain of '*' and '+' nodes that
        sum((w * x for w, x in zip(ws, xs)), start) builds, made in one call."""
        cdef list w = list(ws), x = list(xs)
        cdef Py_ssize_t k, n = min(len(w), len(x))
        cdef real_t* number = NULL
        cdef node_t acc, rhs, m
        cdef Value h
        if type(start) is not Value or not all_values_or_reals(w, x, n) or not recording():
            return python_sum_of_products(start, w, x)
        if n == 0:
            return start
        acc = (<Value>start).slot
        try:
            # everything that can fail comes before the first node is made
            safe_realloc(<void**>&number, n, sizeof(real_t))
            read_terms(<Value>start, w, x, n, number)
            h = new_handle()
            reserve(<node_t>min(3 * n, INT32_MAX))  # per term: a leaf for a number, '*', '+'
            for k in range(n):
                rhs = (<Value>x[k]).slot if type(x[k]) is Value else push(LEAF, number[k], -1, -1)
                m = push(MUL, mul_forward(tape.value[(<Value>w[k]).slot], tape.value[rhs]),
                         (<Value>w[k]).slot, rhs)
                acc = push(ADD, add_forward(tape.value[acc], tape.value[m]), acc, m)
            return attach(h, acc)
        finally:
            PyMem_Free(number)

    @staticmethod
    def _affine(start, ws, xs):
        """start + ws[0] * xs[0] + ws[1] * xs[1] + ... as one node (op 'affine', children
        start, ws and xs): the value and grads of micrograd's chain, in one node."""
        cdef list w = list(ws), x = list(xs)
        cdef Py_ssize_t k, n = min(len(w), len(x))
        cdef node_t* kids = NULL
        cdef real_t* number = NULL
        cdef node_t i
        cdef Value h
        if type(start) is not Value or not all_values_or_reals(w, x, n) or not recording():
            return python_sum_of_products(start, w, x)
        if n == 0:
            return start
        try:
            # everything that can fail comes before the first node is made
            if 2 * n + 1 > INT32_MAX:
                raise MemoryError("fastgrad: too many terms for one node")
            safe_realloc(<void**>&number, n, sizeof(real_t))
            safe_realloc(<void**>&kids, 2 * n + 2, sizeof(node_t))
            read_terms(<Value>start, w, x, n, number)
            h = new_handle()
            reserve(<node_t>(n + 1))            # a leaf per number, and the node
        except BaseException:
            PyMem_Free(kids)
            PyMem_Free(number)
            raise
        kids[0] = <node_t>(2 * n + 1)
        kids[1] = (<Value>start).slot
        for k in range(n):
            kids[2 + 2 * k] = (<Value>w[k]).slot
            kids[3 + 2 * k] = (<Value>x[k]).slot if type(x[k]) is Value else \
                push(LEAF, number[k], -1, -1)
        PyMem_Free(number)
        i = push_above(AFFINE, affine_forward(kids), -1, -1, highest_child(kids))
        tape.param[i].kids = kids
        for k in range(1, 2 * n + 2):
            add_ref(kids[k])
            tape.flags[i] &= descends_to(i, kids[k]) | ~DESCENDS
        return attach(h, i)

    def __reduce__(self):
        if tape.op[check_slot(self)] != LEAF:
            raise TypeError("only leaf Values can be pickled or copied (a graph node would lose its children)")
        return (_restore, (self.data, self.grad, self.label))


cdef int install_slots() except -1:
    # every handle type frees its handles with dealloc_handle, which reuses them as any
    # of the types: so they must all have _Handle's layout; the GC clears them with
    # clear_handle; and data and grad are written through the fast path beside it
    for kind in (_Handle, Value, GptValue):
        if kind.__basicsize__ != _Handle.__basicsize__:
            raise ImportError(f"fastgrad: {kind.__name__} is not laid out as _Handle")
        (<PyTypeObject*>kind).tp_dealloc = dealloc_handle
        (<PyTypeObject*>kind).tp_clear = clear_handle
        (<PyTypeObject*>kind).tp_setattro = handle_setattro
    return 0


def _restore_gpt(data, grad):
    """Unpickles a leaf fastgrad.microgpt.Value."""
    v = GptValue(data)
    v.grad = grad
    return v


@cython.final
cdef class GptValue(_Handle):
    """ stores a single scalar value and its gradient (microgpt's API) """

    def __init__(self, data, children=(), local_grads=()):
        # microgpt's constructor: a node with children carries one local derivative
        # (d self / d child) per child, fixed here; the C sweep applies them itself
        cdef real_t x = real_or_raise(data, "Value data")
        cdef list kids = list(children), grads = list(local_grads)
        cdef Py_ssize_t k, n = len(kids)
        cdef node_t* block = NULL
        cdef real_t* d
        cdef node_t i
        for c in kids:
            if type(c) is not GptValue:
                raise TypeError(f"children of a Value must be Values, not {type(c).__name__!r}")
            check_slot(<GptValue>c)
        if len(grads) != n:
            raise ValueError(f"a Value needs one local gradient per child: got {n} "
                             f"children and {len(grads)} local_grads")
        if self.slot >= 0:                     # a handle names one node for life
            raise TypeError("Value.__init__ cannot be called on an existing Value")
        if n == 0:
            reserve(1)
            attach(self, push(LEAF, x, -1, -1))
            return
        if n > INT32_MAX - 2:
            raise MemoryError("fastgrad: too many children for one node")
        block = new_local_block(<node_t>n)
        d = local_grads_of(block)
        try:
            for k in range(n):
                d[k] = real_or_raise(grads[k], "a local gradient")
            reserve(1)
        except BaseException:
            PyMem_Free(block)
            raise
        for k in range(n):
            block[k + 1] = (<GptValue>kids[k]).slot
        i = push_above(LOCAL, x, -1, -1, highest_child(block))
        tape.param[i].kids = block
        for k in range(n):
            add_ref(block[k + 1])
            tape.flags[i] &= descends_to(i, block[k + 1]) | ~DESCENDS
        attach(self, i)

    @property
    def _children(self):
        """The node's children, in the order they were given (a child used twice, as in
        `a * a`, appears twice)."""
        cdef node_t i = check_slot(self), k
        cdef node_t* kids
        if has_child_list(tape.op[i]):
            kids = tape.param[i].kids
            if kids == NULL:
                return ()
            return tuple([handle_of(kids[k], True) for k in range(1, kids[0] + 1)])
        if tape.rhs[i] >= 0:
            return (handle_of(tape.lhs[i], True), handle_of(tape.rhs[i], True))
        if tape.lhs[i] >= 0:
            return (handle_of(tape.lhs[i], True),)
        return ()

    @property
    def _local_grads(self):
        """d self / d child for each of _children: the constants it was made with, or for
        an operator's node its op's local derivatives (at the current values)."""
        return local_grads(check_slot(self))

    def __reduce__(self):
        if tape.op[check_slot(self)] != LEAF:
            raise TypeError("only leaf Values can be pickled or copied (a graph node would lose its children)")
        return (_restore_gpt, (self.data, self.grad))


install_slots()
