# Making nodes from Python operands: numbers, handles, no_grad. (Part of _core.pyx.)

cdef tuple _SYMBOL = tuple(_SYMBOL_BY_OP[op] for op in range(COUNT))   # `_op` by code

# no_grad: while the calling thread's grad mode is off (fastgrad.no_grad, set_grad_enabled),
# ops make leaves holding their values, with no children. The mode is per thread, in
# thread-specific storage (NULL: on, the default); _no_grad_threads counts the threads
# whose mode is off, so that an op looks it up only while some thread's is. (A thread
# that ends with its mode off stays counted: ops then just keep looking the flag up.)
cdef Py_tss_t _grad_off
cdef Py_ssize_t _no_grad_threads = 0
if PyThread_tss_create(&_grad_off) != 0:
    raise MemoryError("fastgrad: cannot create thread-specific storage")


cdef inline bint recording() noexcept:
    return _no_grad_threads == 0 or PyThread_tss_get(&_grad_off) == NULL


def _set_grad_enabled(bint mode):
    """Turns the calling thread's grad mode on or off; returns what it was."""
    global _no_grad_threads
    cdef bint was = PyThread_tss_get(&_grad_off) == NULL
    if mode != was:
        if PyThread_tss_set(&_grad_off, NULL if mode else <void*>1) != 0:
            raise MemoryError("fastgrad: cannot set thread-specific storage")
        _no_grad_threads += -1 if mode else 1
    return was


def _is_grad_enabled():
    return recording()


# ------------------------------------------------------------------------- operands

cdef inline int as_real(object x, real_t* out) except -1:
    """Reads a number into out: 1 on success, 0 if x is not a number (the operator then
    returns NotImplemented), -1 with an exception set for numbers that do not fit."""
    cdef PyNumberMethods* nb
    if PyFloat_CheckExact(x):
        out[0] = PyFloat_AS_DOUBLE(x)
        return 1
    if PyFloat_Check(x) or PyLong_Check(x):
        out[0] = PyFloat_AsDouble(x)
        return 1
    nb = Py_TYPE(x).tp_as_number
    if nb == NULL or (nb.nb_float == NULL and nb.nb_index == NULL):
        return 0
    try:
        out[0] = PyFloat_AsDouble(x)     # __float__ or __index__, as float(x) minus strings
    except TypeError:
        return 0
    return 1


cdef real_t real_or_raise(object x, str what) except? -1.0:
    cdef real_t r
    if not as_real(x, &r):
        raise TypeError(f"{what} must be a real number, not {type(x).__name__!r}")
    return r


# The engine makes and frees its handles itself. Cython's tp_new for a GC type tracks
# each object and its tp_dealloc saves and restores the exception state around every
# __dealloc__: ~80 instructions per op (of ~700), measured with callgrind. A handle holds
# no reference that can form a cycle unless a Python _backward is assigned, so an engine
# handle is GC-tracked only while its _fn is a function: __cinit__ untracks it at birth,
# the _backward setter tracks it, and restore_rule and clear_handle (its tp_clear, when
# the GC breaks a cycle through the function) untrack it as they let go of the function.
# So here handles are:
#   - made from the spare handles of dead ones when there are any (refcount and type set
#     again, slot -1 and _fn None kept from their last life), otherwise by Cython's tp_new;
#   - freed by dealloc_handle (installed as the three handle types' tp_dealloc below the
#     classes), which asks the GC about a handle only when the invariant says it may be
#     tracked, saves the exception state only when one is set, and keeps up to
#     SPARE_HANDLES of them for reuse.
cdef enum:
    SPARE_HANDLES = 1024

cdef PyObject* _spare_handles[SPARE_HANDLES]   # dead handles: untracked, slot -1, _fn None
cdef int _spares = 0


cdef inline object reuse_spare(PyTypeObject* kind):
    # the last spare handle, now a live one of that type (there must be one)
    global _spares
    _spares -= 1
    h = <object>PyObject_Init(_spare_handles[_spares], kind)
    decref(<PyObject*>h)                # (the cast took a second reference: h holds one)
    return h


cdef inline Value new_handle():
    if _spares > 0:
        return <Value>reuse_spare(<PyTypeObject*>Value)
    return Value.__new__(Value)


cdef inline GptValue new_gpt_handle():
    if _spares > 0:
        return <GptValue>reuse_spare(<PyTypeObject*>GptValue)
    return GptValue.__new__(GptValue)


cdef void dealloc_handle(PyObject* o) noexcept:
    """The handle types' tp_dealloc: the slot is let go of (it dies too unless a parent
    names it), then the handle is kept as a spare or given back to the allocator. Letting
    go of a slot can run Python code (a pinned handle's _backward, a label dying), so an
    exception being raised meanwhile is put aside for it. (o is only ever cast in place:
    a typed variable would take a reference to an object whose count is 0.)"""
    global _spares
    cdef node_t i = (<_Handle>o).slot
    cdef PyTypeObject* kind = <PyTypeObject*>type_of(o)
    cdef PyObject* etype = NULL
    cdef PyObject* evalue = NULL
    cdef PyObject* etb = NULL
    cdef bint pending = PyErr_Occurred() != NULL
    if (<_Handle>o)._fn is not None or not is_handle_type(kind):
        # (otherwise it is untracked: see above; a Python subclass's instance is tracked
        # by its type, and subtype_dealloc tracks it again before calling this)
        if gc_is_tracked(o):
            gc_untrack(o)
    if pending:
        PyErr_Fetch(&etype, &evalue, &etb)
    if i >= 0:
        (<_Handle>o).slot = -1
        tape.handle[i] = NULL
        release(i)
    if (<_Handle>o)._fn is not None:
        (<_Handle>o)._fn = None
    if pending:
        PyErr_Restore(etype, evalue, etb)
    if not is_handle_type(kind):
        # a Python subclass of _Handle, freed through subtype_dealloc: its memory may
        # differ (a dict, a weakref list), and subtype_dealloc drops the type's reference
        kind.tp_free(o)
        return
    if PyType_HasFeature(kind, Py_TPFLAGS_HEAPTYPE):
        decref(<PyObject*>kind)         # (an instance of a heap type holds a reference to
                                        # it; PyObject_Init takes a new one on reuse)
    if _spares < SPARE_HANDLES:
        _spare_handles[_spares] = o
        _spares += 1
    else:
        kind.tp_free(o)


cdef int clear_handle(PyObject* o) noexcept:
    """The handle types' tp_clear: the cyclic GC breaking a cycle through a Python
    _backward. The handle lets go of the function, and is untracked as an engine handle
    without one always is (see above). (The GC holds a reference to o meanwhile.)"""
    if is_handle_type(<PyTypeObject*>type_of(o)):
        gc_untrack(o)
    (<_Handle>o)._fn = None
    return 0


# Every training loop writes data and grad once per parameter per step (micrograd's SGD
# and zero_grad, microgpt's Adam). Through the generic protocol a write is a lookup along
# the type's MRO and a call of the property's setter: ~50 ns, against ~9 for an attribute
# in __slots__. The handle types' tp_setattro (installed with tp_dealloc) takes those two
# names first, for the engine's own types and the operands the setters take without
# question (an exact float or int), with the setters' effects (writing data bumps the
# epoch recompute() reads): ~16 ns. Anything else, and a name that is not the interned
# string, goes the generic way to the same setters. Reads keep the generic tp_getattro:
# CPython calls the methods of a type with any other one through a bound method object
# (v.relu() measured 41 -> 81 ns), which would cost more than the reads gain.
cdef str _DATA = "data", _GRAD = "grad"


cdef int handle_setattro(PyObject* o, PyObject* name, PyObject* value) noexcept:
    cdef node_t i
    cdef real_t x
    if value != NULL and (name == <PyObject*>_DATA or name == <PyObject*>_GRAD) and \
            is_handle_type(<PyTypeObject*>type_of(o)) and (<_Handle>o).slot >= 0:
        i = (<_Handle>o).slot
        if float_check_exact(value):
            x = float_as_double(value)
        elif long_check_exact(value):
            x = long_as_double(value)
            if x == -1.0 and PyErr_Occurred() != NULL:
                return -1                   # (an int too large for a float: OverflowError)
        else:
            return generic_setattr(o, name, value)
        if name == <PyObject*>_DATA:
            tape.value[i] = x
            tape.epoch += 1
        else:
            tape.grad[i] = x
        return 0
    return generic_setattr(o, name, value)


cdef inline bint is_handle_type(PyTypeObject* kind) noexcept:
    # the engine's own handle types, all laid out as _Handle (see install_slots)
    return (kind == <PyTypeObject*>Value or kind == <PyTypeObject*>GptValue or
            kind == <PyTypeObject*>_Handle)


cdef inline _Handle new_handle_like(_Handle a):
    # a handle of a's API, for a node made from a
    if type(a) is Value:
        return new_handle()
    return new_gpt_handle()


cdef inline _Handle attach(_Handle h, node_t i):
    h.slot = i
    tape.handle[i] = <PyObject*>h
    tape.refs[i] += 1
    return h


cdef _Handle handle_of(node_t i, bint gpt):
    """The live handle of slot i, made (a GptValue if gpt, else a Value) if it has none:
    one handle per slot at most."""
    if tape.handle[i] != NULL:
        return <_Handle>tape.handle[i]
    return attach(new_gpt_handle() if gpt else new_handle(), i)


cdef TypeError mixed_kinds(_Handle a, object b):
    return TypeError(
        f"cannot combine a {type(a).__module__}.{type(a).__name__} with a "
        f"{type(b).__module__}.{type(b).__name__}: a graph is built from one Value class")


cdef object binary(uint8_t op, _Handle a, object b):
    """a (op) b for ADD and MUL; a number b becomes a leaf node, as in micrograd."""
    cdef real_t x
    cdef node_t lhs = check_slot(a), rhs
    cdef _Handle h
    if type(b) is type(a):
        rhs = check_slot(<_Handle>b)
        x = tape.value[rhs]
    elif not as_real(b, &x):
        if isinstance(b, _Handle):
            raise mixed_kinds(a, b)
        return NotImplemented
    else:
        rhs = -1
    h = new_handle_like(a)
    reserve(2)
    return attach(h, binary_node(op, lhs, x, rhs))


cdef inline node_t binary_node(uint8_t op, node_t lhs, real_t x, node_t rhs) noexcept:
    """The node of a (op) b, ADD or MUL, after reserve(2): lhs is a's slot, x b's value
    and rhs b's slot, or -1 for a number, which becomes a leaf (a leaf of the result
    under no_grad)."""
    if not recording():
        return push(LEAF, add_forward(tape.value[lhs], x) if op == ADD else
                    mul_forward(tape.value[lhs], x), -1, -1)
    if rhs < 0:
        rhs = push(LEAF, x, -1, -1)
    if op == ADD:
        return push(ADD, add_forward(tape.value[lhs], x), lhs, rhs)
    return push(MUL, mul_forward(tape.value[lhs], x), lhs, rhs)


cdef object unary(uint8_t op, real_t value, _Handle a):
    """A new node op(a) of the given value (a leaf under no_grad)."""
    cdef _Handle h = new_handle_like(a)
    reserve(1)
    return attach(h, unary_node(op, value, a.slot))


cdef inline node_t unary_node(uint8_t op, real_t value, node_t a) noexcept:
    # the node op(a) of the given value, after reserve(1) (a leaf under no_grad)
    if not recording():
        return push(LEAF, value, -1, -1)
    return push(op, value, a, -1)


cdef object power_of_values(_Handle a, _Handle b):
    cdef real_t r
    cdef _Handle h
    powv_forward(tape.value[check_slot(a)], tape.value[check_slot(b)], &r)
    h = new_handle_like(a)
    reserve(1)
    if not recording():
        return attach(h, push(LEAF, r, -1, -1))
    return attach(h, push(POWV, r, a.slot, b.slot))


cdef inline node_t check_slot(_Handle v) except -1:
    if v.slot < 0:
        raise ValueError("this Value was never initialised (made by Value.__new__)")
    return v.slot


cdef bint all_values_or_reals(list w, list x, Py_ssize_t n):
    """Whether w[:n] are Values and x[:n] Values or plain numbers (the fast path)."""
    cdef Py_ssize_t k
    for k in range(n):
        if type(w[k]) is not Value:
            return False
        if not (type(x[k]) is Value or PyFloat_Check(x[k]) or PyLong_Check(x[k])):
            return False
    return True


cdef int read_terms(Value start, list w, list x, Py_ssize_t n, real_t* number) except -1:
    """Checks the handles of start + w[k] * x[k] ... and reads its number operands into
    number[k]: all of a sum of products' work that can fail."""
    cdef Py_ssize_t k
    check_slot(start)
    for k in range(n):
        check_slot(<Value>w[k])
        if type(x[k]) is Value:
            check_slot(<Value>x[k])
        else:
            number[k] = x[k]
    return 0


cdef object python_sum_of_products(start, list w, list x):
    # what Value._sum_of_products stands for, for operands the fast path does not take
    act = start
    for wi, xi in zip(w, x):
        act = act + wi * xi
    return act


cdef inline bint is_empty(object s):
    # the constructor's '' defaults; any other object (even one whose == is odd) is kept
    return type(s) is str and len(<str>s) == 0
