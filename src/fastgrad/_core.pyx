# cython: embedsignature=True
"""The compiled engine: a tape arena of C arrays, a thin `Value` handle, the reverse sweep.

Layout of this file: memory, slots (allocation, references, freeing), one section per op
(forward kernel beside its local-derivative kernel), ordering and sweep, the `Value`
handle, and `_test_*` hooks for the test suite. Declarations are in _core.pxd.
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.pythread cimport PyThread_tss_create, PyThread_tss_get, PyThread_tss_set
from libc.math cimport exp, fabs, floor, isfinite, isinf, isnan, log, pow, sqrt, tanh
from libc.stdint cimport INT32_MAX, int32_t, uint8_t, uint16_t
from libc.string cimport memcpy, memset

from fastgrad.ops import SYMBOL as _SYMBOL_BY_OP, pow_symbol as _pow_symbol

cdef extern from *:
    """
    #define fastgrad_prefetch(p) __builtin_prefetch((const void*)(p))
    """
    void prefetch "fastgrad_prefetch"(const void* p) noexcept nogil

cdef extern from "Python.h":
    bint PyFloat_CheckExact(object o)
    bint PyFloat_Check(object o)
    bint PyLong_Check(object o)
    bint PyBool_Check(object o)
    double PyFloat_AS_DOUBLE(object o)
    double PyFloat_AsDouble(object o) except? -1.0
    char* PyBytes_AS_STRING(object o)
    bytes PyBytes_FromStringAndSize(char* s, Py_ssize_t n)
    void PyObject_GC_Track(object o)
    void PyObject_GC_UnTrack(object o)
    bint PyObject_GC_IsTracked(object o)
    ctypedef struct PyNumberMethods:
        void* nb_float
        void* nb_index
    ctypedef struct PyTypeObject:
        PyNumberMethods* tp_as_number
    PyTypeObject* Py_TYPE(object o)
    void incref "Py_INCREF"(PyObject* o)
    void decref "Py_DECREF"(PyObject* o)

# The arena. One per process; every access holds the GIL, so threads share it safely.
cdef Tape T
memset(&T, 0, sizeof(Tape))
T.free_head = -1
T.epoch = 1                 # (a replay's stamp 0 is never current)

# Sparse per-node Python attributes, keyed by slot; flags[i] says whether an entry exists.
cdef dict _labels = {}      # HAS_LABEL: the node's label
cdef dict _opstrs = {}      # HAS_OPSTR: the `_op` string of a CUSTOM node
cdef dict _orders = {}      # HAS_ORDER: the node's reachable slots, parents first (bytes)
cdef dict _replays = {}     # HAS_REPLAY: the _Replay recompute() built for the node
cdef tuple _SYMBOL = tuple(_SYMBOL_BY_OP[op] for op in range(COUNT))

# no_grad: while the calling thread is inside a no_grad block (fastgrad.no_grad), ops make
# leaves holding their values, with no children. The depth of nesting is per thread, in
# thread-specific storage; _no_grad_threads counts the threads inside a block, so that an
# op looks the depth up only while some thread is.
cdef Py_tss_t _no_grad_depth
cdef Py_ssize_t _no_grad_threads = 0
if PyThread_tss_create(&_no_grad_depth) != 0:
    raise MemoryError("fastgrad: cannot create thread-specific storage")


cdef inline bint recording() noexcept:
    return _no_grad_threads == 0 or PyThread_tss_get(&_no_grad_depth) == NULL


def _enter_no_grad():
    global _no_grad_threads
    cdef Py_ssize_t depth = <Py_ssize_t>PyThread_tss_get(&_no_grad_depth)
    if PyThread_tss_set(&_no_grad_depth, <void*>(depth + 1)) != 0:
        raise MemoryError("fastgrad: cannot set thread-specific storage")
    if depth == 0:
        _no_grad_threads += 1


def _exit_no_grad():
    global _no_grad_threads
    cdef Py_ssize_t depth = <Py_ssize_t>PyThread_tss_get(&_no_grad_depth)
    if depth == 0:
        raise RuntimeError("no_grad exited more often than entered")
    PyThread_tss_set(&_no_grad_depth, <void*>(depth - 1))   # (lowering never allocates)
    if depth == 1:
        _no_grad_threads -= 1


def _is_grad_enabled():
    return recording()


# allocations left before a simulated failure (-1: never); set by _test_fail_allocs
cdef Py_ssize_t _allocs_until_failure = -1


# ---------------------------------------------------------------------------- memory

cdef int safe_realloc(void** p, size_t nelems, size_t elsize) except -1:
    """Resizes *p to nelems elements. On failure raises MemoryError and leaves *p as it was."""
    global _allocs_until_failure
    cdef void* q
    if _allocs_until_failure == 0:
        raise MemoryError("fastgrad: simulated allocation failure")
    if _allocs_until_failure > 0:
        _allocs_until_failure -= 1
    if nelems > (<size_t>-1) // elsize // 2:
        raise MemoryError(f"fastgrad: cannot allocate {nelems} elements")
    q = PyMem_Realloc(p[0], nelems * elsize)
    if q == NULL:
        raise MemoryError(f"fastgrad: cannot allocate {nelems * elsize} bytes")
    p[0] = q
    return 0


cdef int grow(node_t needed) except -1:
    """Grows every tape array to hold at least `needed` slots (doubling)."""
    cdef size_t cap = T.capacity if T.capacity > 0 else 1024
    while cap < <size_t>needed:
        cap *= 2
    if cap > INT32_MAX:
        cap = INT32_MAX
    if cap < <size_t>needed:
        raise MemoryError("fastgrad: the tape is full (2**31 - 1 nodes)")
    # Each array is resized in turn; if one fails the earlier ones are merely larger than
    # `capacity` says, which is harmless.
    safe_realloc(<void**>&T.value, cap, sizeof(real_t))
    safe_realloc(<void**>&T.grad_block, cap + 1, sizeof(real_t))
    T.grad = T.grad_block + 1           # grad[-1]: scratch (see Tape.grad_block)
    T.grad_block[0] = 0.0
    safe_realloc(<void**>&T.param, cap, sizeof(param_t))
    safe_realloc(<void**>&T.lhs, cap, sizeof(node_t))
    safe_realloc(<void**>&T.rhs, cap, sizeof(node_t))
    safe_realloc(<void**>&T.refs, cap, sizeof(int32_t))
    safe_realloc(<void**>&T.waiting_block, cap + 1, sizeof(int32_t))
    T.waiting = T.waiting_block + 1
    T.waiting_block[0] = NO_PARENTS     # waiting[-1]: "no child" (see Tape.waiting_block)
    safe_realloc(<void**>&T.op, cap, sizeof(uint8_t))
    safe_realloc(<void**>&T.flags, cap, sizeof(uint16_t))
    safe_realloc(<void**>&T.handle, cap, sizeof(PyObject*))
    T.capacity = <node_t>cap
    return 0


cdef inline int reserve(node_t n) except -1:
    # push takes free slots first (size - live of them), then new ones at size; after
    # reserve(n), n pushes cannot fail. Once half the arena was freed since the last sort,
    # the free list is sorted here, when the frees are over and building starts again.
    cdef node_t fresh = n - (T.size - T.live)
    if T.freed > T.size // 2:
        sort_free_list()
    if fresh > 0 and T.size > T.capacity - fresh:
        grow(T.size + fresh)
    return 0


cdef int list_grow(NodeList* l) except -1:
    cdef size_t cap = 64 if l.capacity == 0 else 2 * <size_t>l.capacity
    safe_realloc(<void**>&l.items, cap, sizeof(node_t))
    l.capacity = cap
    return 0


cdef inline int list_push(NodeList* l, node_t i) except -1:
    if l.size == l.capacity:
        list_grow(l)
    l.items[l.size] = i
    l.size += 1
    return 0


# ----------------------------------------------------------------------------- slots

cdef inline void pin(node_t c) noexcept:
    # A node with a Python _backward keeps its handle (which holds the function) alive
    # while a parent names it. The handle is GC-tracked, so once unpinned the cycle
    # handle -> function -> closure -> handle is collected like micrograd's.
    incref(T.handle[c])
    T.flags[c] |= PINNED


cdef inline void add_ref(node_t c) noexcept:
    T.refs[c] += 1
    if (T.flags[c] & (HAS_FN | PINNED)) == HAS_FN:
        pin(c)


cdef inline uint16_t descends_to(node_t i, node_t c) noexcept:
    # DESCENDS if the edge i -> c goes down and c's own graph descends
    return T.flags[c] & DESCENDS if c < i else 0


cdef inline node_t push(uint8_t op, real_t value, node_t lhs, node_t rhs) noexcept:
    cdef node_t i
    cdef uint16_t descends = DESCENDS
    if T.free_head >= 0:
        i = T.free_head
        T.free_head = T.lhs[i]
    else:
        i = T.size
        T.size += 1
    T.value[i] = value
    T.grad[i] = 0.0                     # (param[i] is set by the ops that have one)
    T.lhs[i] = lhs
    T.rhs[i] = rhs
    T.refs[i] = 0
    T.waiting[i] = 0
    T.op[i] = op
    T.handle[i] = NULL
    T.live += 1
    if lhs >= 0:
        add_ref(lhs)
        descends &= descends_to(i, lhs)
    if rhs >= 0:
        add_ref(rhs)
        descends &= descends_to(i, rhs)
    T.flags[i] = descends               # (no FREE any more)
    return i


cdef inline bint has_kids(uint8_t op) noexcept nogil:
    # the ops whose children are a list in param[i].kids rather than lhs/rhs
    return op == CUSTOM or op == AFFINE


cdef inline bint drop_ref(node_t c) noexcept:
    """Drops one reference to c; True if that was the last one (c must then be freed)."""
    T.refs[c] -= 1
    if T.refs[c] == 0:
        return True
    if T.refs[c] == 1 and T.flags[c] & PINNED:
        # Only the handle is left: the tape stops holding it. This may run Python code
        # (the handle's function can die), which may build or free other nodes, so
        # callers re-read the tape's arrays afterwards rather than caching them.
        T.flags[c] &= ~PINNED
        decref(T.handle[c])
    return False


cdef void release(node_t i) noexcept:
    cdef node_t pending, j, c, n, k
    cdef node_t* kids
    if not drop_ref(i):
        return
    # Free i and everything only it kept alive, iteratively: dead nodes are chained
    # through refs[] (unused once a node is dead), -1 ending the chain.
    T.refs[i] = -1
    pending = i
    while pending != -1:
        j = pending
        pending = T.refs[j]
        if has_kids(T.op[j]):
            kids = T.param[j].kids
            T.param[j].kids = NULL
            n = kids[0] if kids != NULL else 0
            for k in range(1, n + 1):
                c = kids[k]
                if drop_ref(c):
                    T.refs[c] = pending
                    pending = c
            PyMem_Free(kids)
        else:
            c = T.lhs[j]
            if c >= 0 and drop_ref(c):
                T.refs[c] = pending
                pending = c
            c = T.rhs[j]
            if c >= 0 and drop_ref(c):
                T.refs[c] = pending
                pending = c
        if T.flags[j] & HAS_LABEL:
            _labels.pop(j, None)
        if T.flags[j] & HAS_OPSTR:
            _opstrs.pop(j, None)
        if T.flags[j] & HAS_ORDER:
            T.cached -= len(_orders.pop(j)) // sizeof(node_t)
        if T.flags[j] & HAS_REPLAY:
            T.replayed -= (<_Replay>_replays.pop(j)).size
        T.refs[j] = 0
        T.flags[j] = FREE
        T.op[j] = LEAF
        T.rhs[j] = -1
        T.lhs[j] = T.free_head
        T.free_head = j
        T.live -= 1
        T.freed += 1


cdef void sort_free_list() noexcept nogil:
    """Rethreads the free list in increasing slot order.

    Freeing pushes slots in the order a graph dies, so a graph built from a long free list
    lands scattered over the arena, and every pass over it misses the cache; and a node
    may land below its children, which costs it the one-pass backward (DESCENDS). In slot
    order, consecutive new nodes sit side by side again, each above the ones before. Runs
    (from reserve, so after a burst of frees, not in the middle of one) once more than
    half the slots have been freed since the last time: its O(size) scan is O(1) per free.
    """
    cdef node_t j, head = -1
    for j in range(T.size - 1, -1, -1):
        if T.flags[j] & FREE:
            T.lhs[j] = head
            head = j
    T.free_head = head
    T.freed = 0


# ------------------------------------------------------------------------------- ops
# One section per op: the forward kernel, the local derivative d out / d child, and the
# rule (ops.DERIVATIVE), which always has the form  child.grad += derivative * out.grad.
# Forward kernels that can fail raise Python's exception for the same float operation.

# ADD: out = a + b; d/da = d/db = 1
cdef inline real_t add_forward(real_t a, real_t b) noexcept nogil:
    return a + b

cdef inline void add_backward(node_t i) noexcept nogil:
    # (1 * g is g, to the bit)
    cdef real_t g = T.grad[i]
    T.grad[T.lhs[i]] += g
    T.grad[T.rhs[i]] += g


# MUL: out = a * b; d/da = b, d/db = a
cdef inline real_t mul_forward(real_t a, real_t b) noexcept nogil:
    return a * b

cdef inline void mul_backward(node_t i) noexcept nogil:
    cdef real_t g = T.grad[i]
    cdef node_t a = T.lhs[i], b = T.rhs[i]
    T.grad[a] += T.value[b] * g
    T.grad[b] += T.value[a] * g


# POW: out = a ** k, with Python's float semantics for the forward value
cdef int pow_forward(real_t a, real_t k, real_t* out) except -1:
    if a == 0.0 and k < 0.0 and isfinite(k):
        raise ZeroDivisionError("0.0 cannot be raised to a negative power")
    if a < 0.0 and isfinite(a) and isfinite(k) and k != floor(k):
        # Python would return a complex number, which a Value cannot hold
        raise ValueError(f"negative number {a!r} cannot be raised to a fractional power {k!r}")
    out[0] = pow(a, k)
    if isinf(out[0]) and isfinite(a) and isfinite(k):
        raise OverflowError(f"{a!r} ** {k!r}: numerical result out of range")
    return 0

cdef inline real_t pow_derivative(real_t a, real_t k) noexcept nogil:
    # k * a ** (k - 1) in IEEE pow (inf or nan, never an exception) since a sweep cannot
    # stop halfway; for k = 2, pow(a, 1) is exactly a, so the call is skipped
    return 2.0 * a if k == 2.0 else k * pow(a, k - 1.0)

cdef inline void pow_backward(node_t i) noexcept nogil:
    cdef node_t a = T.lhs[i]
    T.grad[a] += pow_derivative(T.value[a], T.param[i].exponent) * T.grad[i]


# RELU: out = 0 if a < 0 else a (micrograd keeps -0.0 and nan as they are);
# d/da = (out > 0), as a number: 0 * inf must stay nan as in micrograd
cdef inline real_t relu_forward(real_t a) noexcept nogil:
    return 0.0 if a < 0.0 else a

cdef inline real_t relu_derivative(real_t out) noexcept nogil:
    return <real_t>(out > 0.0)

cdef inline void relu_backward(node_t i) noexcept nogil:
    T.grad[T.lhs[i]] += relu_derivative(T.value[i]) * T.grad[i]


# TANH: out = tanh(a), C's tanh saturating to +-1 instead of overflowing; d/da = 1 - out^2
cdef inline real_t tanh_forward(real_t a) noexcept nogil:
    return tanh(a)

cdef inline real_t tanh_derivative(real_t out) noexcept nogil:
    return 1.0 - out * out

cdef inline void tanh_backward(node_t i) noexcept nogil:
    T.grad[T.lhs[i]] += tanh_derivative(T.value[i]) * T.grad[i]


# EXP: out = exp(a), raising OverflowError as math.exp does; d/da = out
cdef int exp_forward(real_t a, real_t* out) except -1:
    out[0] = exp(a)
    if isinf(out[0]) and isfinite(a):
        raise OverflowError("math range error")
    return 0

cdef inline void exp_backward(node_t i) noexcept nogil:
    T.grad[T.lhs[i]] += T.value[i] * T.grad[i]


# AFFINE: out = b + w0 * x0 + w1 * x1 + ..., kids = [b, w0, x0, w1, x1, ...]; summed left
# to right, so the value is micrograd's sum((w * x ...), b) to the last bit;
# d/db = 1, d/dw_k = x_k, d/dx_k = w_k
cdef inline real_t affine_forward(node_t* kids) noexcept nogil:
    cdef node_t k
    cdef real_t acc = T.value[kids[1]]
    for k in range(2, kids[0], 2):
        acc = acc + T.value[kids[k]] * T.value[kids[k + 1]]
    return acc

cdef inline void affine_backward(node_t i) noexcept nogil:
    cdef node_t* kids = T.param[i].kids
    cdef real_t g = T.grad[i]
    cdef node_t k, w, x
    T.grad[kids[1]] += g
    for k in range(2, kids[0], 2):
        w = kids[k]
        x = kids[k + 1]
        T.grad[w] += T.value[x] * g
        T.grad[x] += T.value[w] * g


# LOG: out = log(a), raising ValueError for a <= 0 as math.log does; d/da = 1 / a
cdef int log_forward(real_t a, real_t* out) except -1:
    if a <= 0.0:
        raise ValueError("math domain error")
    out[0] = log(a)
    return 0

cdef inline real_t log_derivative(real_t a) noexcept nogil:
    return 1.0 / a

cdef inline void log_backward(node_t i) noexcept nogil:
    T.grad[T.lhs[i]] += log_derivative(T.value[T.lhs[i]]) * T.grad[i]


# SIGMOID: out = 1 / (1 + exp(-a)); for a < 0 as exp(a) / (1 + exp(a)), so that no exp
# overflows: finite for every finite a, exactly 0 or 1 far out; d/da = out (1 - out)
cdef inline real_t sigmoid_forward(real_t a) noexcept nogil:
    cdef real_t e
    if a >= 0.0:
        return 1.0 / (1.0 + exp(-a))
    e = exp(a)
    return e / (1.0 + e)

cdef inline real_t sigmoid_derivative(real_t out) noexcept nogil:
    return out * (1.0 - out)

cdef inline void sigmoid_backward(node_t i) noexcept nogil:
    T.grad[T.lhs[i]] += sigmoid_derivative(T.value[i]) * T.grad[i]


# SQRT: out = sqrt(a), raising ValueError for a < 0 as math.sqrt does;
# d/da = 1 / (2 out), inf at 0
cdef int sqrt_forward(real_t a, real_t* out) except -1:
    if a < 0.0:
        raise ValueError("math domain error")
    out[0] = sqrt(a)
    return 0

cdef inline real_t sqrt_derivative(real_t out) noexcept nogil:
    return 1.0 / (2.0 * out)

cdef inline void sqrt_backward(node_t i) noexcept nogil:
    T.grad[T.lhs[i]] += sqrt_derivative(T.value[i]) * T.grad[i]


# ABS: out = |a|; d/da = sign(a), 0 at 0 (a subgradient, PyTorch's choice), nan at nan
cdef inline real_t abs_forward(real_t a) noexcept nogil:
    return fabs(a)

cdef inline real_t abs_derivative(real_t a) noexcept nogil:
    return a if isnan(a) else <real_t>(a > 0.0) - <real_t>(a < 0.0)

cdef inline void abs_backward(node_t i) noexcept nogil:
    T.grad[T.lhs[i]] += abs_derivative(T.value[T.lhs[i]]) * T.grad[i]


# POWV: out = a ** b, both Values; a must be positive (then the result is real and
# d/db = out * log(a) exists), else ValueError; overflow raises as for floats.
# d/da = b * a ** (b - 1). IEEE pow and log in both: a base made non-positive later (by
# assigning data) gives nan or inf
cdef int powv_forward(real_t a, real_t b, real_t* out) except -1:
    if a <= 0.0:
        raise ValueError(f"the base of Value ** Value must be positive, not {a!r}")
    out[0] = pow(a, b)
    if isinf(out[0]) and isfinite(a) and isfinite(b):
        raise OverflowError(f"{a!r} ** {b!r}: numerical result out of range")
    return 0

cdef inline real_t powv_base_derivative(real_t a, real_t b) noexcept nogil:
    return b * pow(a, b - 1.0)

cdef inline real_t powv_exponent_derivative(real_t a, real_t out) noexcept nogil:
    return out * log(a)

cdef inline void powv_backward(node_t i) noexcept nogil:
    cdef node_t a = T.lhs[i], b = T.rhs[i]
    cdef real_t g = T.grad[i]
    T.grad[a] += powv_base_derivative(T.value[a], T.value[b]) * g
    T.grad[b] += powv_exponent_derivative(T.value[a], T.value[i]) * g


# CUSTOM: Value(data, children, op); its rule is its Python _backward, if it has one
cdef int custom_backward(node_t i) except -1:
    cdef Value h
    if T.flags[i] & HAS_FN:
        h = <Value>T.handle[i]
        if h._fn is not None:
            h._fn()
    return 0


cdef void more_rules(node_t i) noexcept nogil:
    """The rules of the ops beyond micrograd's, out of line: builtin_rule, inlined into
    every sweep, stays small (inlined, it is ~2 ns/node faster on micrograd's ops)."""
    cdef uint8_t o = T.op[i]
    if o == AFFINE:
        affine_backward(i)
    elif o == LOG:
        log_backward(i)
    elif o == SIGMOID:
        sigmoid_backward(i)
    elif o == SQRT:
        sqrt_backward(i)
    elif o == ABS:
        abs_backward(i)
    elif o == POWV:
        powv_backward(i)


cdef inline void builtin_rule(node_t i) noexcept nogil:
    cdef uint8_t o = T.op[i]
    if o == ADD:
        add_backward(i)
    elif o == MUL:
        mul_backward(i)
    elif o == POW:
        pow_backward(i)
    elif o == RELU:
        relu_backward(i)
    elif o == TANH:
        tanh_backward(i)
    elif o == EXP:
        exp_backward(i)
    elif o != LEAF:
        more_rules(i)


cdef inline int apply_rule(node_t i) except -1:
    if T.op[i] == CUSTOM:
        custom_backward(i)
    else:
        builtin_rule(i)
    return 0


# ------------------------------------------------------------------ ordering, sweep

# How far ahead the loops below prefetch. The graph is a DAG scattered over the arrays,
# so each node costs a few cache misses; the passes below walk queues whose next entries
# are known, so their misses can be started early and overlap.
cdef enum:
    AHEAD = 16


cdef inline void prefetch_node(node_t i) noexcept nogil:
    prefetch(&T.op[i])
    prefetch(&T.lhs[i])
    prefetch(&T.rhs[i])


cdef inline void prefetch_children(node_t i, bint values) noexcept nogil:
    """Prefetches what a pass reads of i's children: their waiting counts, and with
    values their grads and values too (sweeping). CUSTOM and AFFINE children are not
    prefetched. A missing child (-1) costs a useless prefetch, never a fault."""
    cdef node_t a = T.lhs[i], b = T.rhs[i]
    if values:
        prefetch(&T.grad[a])
        prefetch(&T.value[a])
        prefetch(&T.grad[b])
        prefetch(&T.value[b])
    prefetch(&T.waiting[a])
    prefetch(&T.waiting[b])


cdef inline void prefetch_ahead(node_t* queue, Py_ssize_t h, Py_ssize_t size, bint values) noexcept nogil:
    if h + AHEAD < size:                # far ahead: the node's own fields
        prefetch_node(queue[h + AHEAD])
        if values:
            prefetch(&T.grad[queue[h + AHEAD]])
            prefetch(&T.value[queue[h + AHEAD]])
            prefetch(&T.param[queue[h + AHEAD]])
    if h + AHEAD // 2 < size:           # nearer: its children, now that lhs/rhs are in
        prefetch_children(queue[h + AHEAD // 2], values)


cdef int count_parents(NodeList* queue) except -1:
    """Enqueues every node reachable from the roots queue.items[:queue.size] once (roots
    first) and sets waiting[c] to the number of edges into c from reachable parents, plus
    1 for a root, which keeps roots from being enqueued twice (ready_roots takes it off).
    Returns 1 if a reachable node is CUSTOM (its rule may run Python code), else 0. On
    failure every count is back to 0."""
    cdef Py_ssize_t h = 0, k, n
    cdef node_t v, c
    cdef node_t* kids
    cdef int custom = 0
    for k in range(queue.size):
        T.waiting[queue.items[k]] = 1
    try:
        while h < queue.size:
            prefetch_ahead(queue.items, h, queue.size, False)
            v = queue.items[h]
            h += 1
            if has_kids(T.op[v]):
                custom |= T.op[v] == CUSTOM
                kids = T.param[v].kids
                n = kids[0] if kids != NULL else 0
                for k in range(1, n + 1):
                    c = kids[k]
                    if T.waiting[c] == 0:
                        list_push(queue, c)
                    T.waiting[c] += 1
            else:
                # branch-free: a missing child is -1, whose count is never 0; the slot at
                # queue.size is always written, and kept if the child is new
                if queue.size + 2 > queue.capacity:
                    list_grow(queue)
                c = T.lhs[v]
                queue.items[queue.size] = c
                queue.size += T.waiting[c] == 0
                T.waiting[c] += 1
                c = T.rhs[v]
                queue.items[queue.size] = c
                queue.size += T.waiting[c] == 0
                T.waiting[c] += 1
    except MemoryError:
        # a node's count is raised only after it was enqueued
        for k in range(queue.size):
            T.waiting[queue.items[k]] = 0
        T.waiting_block[0] = NO_PARENTS
        raise
    return custom


cdef Py_ssize_t ready_roots(NodeList* queue, Py_ssize_t nroots) noexcept nogil:
    """After count_parents from nroots roots: takes their extra count off and moves the
    roots that no reachable node names to the front of the queue, where Kahn's algorithm
    starts. Returns how many there are."""
    cdef Py_ssize_t k, ready = 0
    cdef node_t r
    for k in range(nroots):
        r = queue.items[k]
        T.waiting[r] -= 1
        if T.waiting[r] == 0:
            queue.items[ready] = r
            ready += 1
    return ready


cdef inline void release_children(node_t v, node_t* queue, Py_ssize_t* t) noexcept nogil:
    """Counts v as done for each child; a child whose parents are all done is enqueued."""
    cdef node_t c, k, n
    cdef node_t* kids
    if has_kids(T.op[v]):
        kids = T.param[v].kids
        n = kids[0] if kids != NULL else 0
        for k in range(1, n + 1):
            c = kids[k]
            T.waiting[c] -= 1
            if T.waiting[c] == 0:
                queue[t[0]] = c
                t[0] += 1
        return
    # a missing child is -1, as in count_parents; the enqueue stays a branch (predicted
    # well on regular graphs, where a data dependency through t would not be)
    c = T.lhs[v]
    T.waiting[c] -= 1
    if T.waiting[c] == 0:
        queue[t[0]] = c
        t[0] += 1
    c = T.rhs[v]
    T.waiting[c] -= 1
    if T.waiting[c] == 0:
        queue[t[0]] = c
        t[0] += 1


cdef void finish_order(NodeList* queue, Py_ssize_t ready) noexcept nogil:
    """Rewrites the queue of count_parents so that every node comes before its children.

    Kahn's algorithm: from the ready roots again, a node is enqueued once its last parent
    has been, which brings every waiting[c] back to 0. It visits the same nodes, so the
    queue cannot grow and nothing here can fail.
    """
    cdef Py_ssize_t h = 0, t = ready
    while h < t:
        prefetch_ahead(queue.items, h, t, False)
        release_children(queue.items[h], queue.items, &t)
        h += 1


cdef void kahn_sweep(NodeList* queue, Py_ssize_t ready) noexcept nogil:
    """finish_order fused with the sweep, for graphs without CUSTOM nodes: a node's rule
    is applied when it leaves the queue, by which time all its parents' have been."""
    cdef Py_ssize_t h = 0, t = ready
    while h < t:
        prefetch_ahead(queue.items, h, t, True)
        builtin_rule(queue.items[h])
        release_children(queue.items[h], queue.items, &t)
        h += 1


cdef int sweep(NodeList* topo) except -1:
    """Applies every node's rule, in topo's order (parents first)."""
    cdef Py_ssize_t s
    for s in range(topo.size):
        prefetch_ahead(topo.items, s, topo.size, True)
        apply_rule(topo.items[s])
    return 0


cdef void sweep_builtin(NodeList* topo) noexcept nogil:
    """sweep() for graphs without CUSTOM nodes (DESCENDS roots): no Python, no checks."""
    cdef Py_ssize_t s
    for s in range(topo.size):
        prefetch_ahead(topo.items, s, topo.size, True)
        builtin_rule(topo.items[s])


# A descending pass may skip this many unreached slots, plus SKIP_RATIO per node swept,
# before it hands the rest of the graph to Kahn's algorithm.
cdef enum:
    SKIP_SLACK = 4096
    SKIP_RATIO = 8


cdef inline node_t mark_children(node_t v) noexcept nogil:
    """Marks v's children reached (waiting = 1; the sentinel waiting[-1] stays nonzero);
    returns how many were not reached before."""
    cdef node_t c, k, n, w, new = 0
    cdef node_t* kids
    if T.op[v] == AFFINE:
        kids = T.param[v].kids
        n = kids[0]
        for k in range(1, n + 1):
            c = kids[k]
            new += T.waiting[c] == 0
            T.waiting[c] = 1
        return new
    c = T.lhs[v]
    w = T.waiting[c]
    new += w == 0
    T.waiting[c] = w | 1
    c = T.rhs[v]
    w = T.waiting[c]
    new += w == 0
    T.waiting[c] = w | 1
    return new


cdef int list_try_push(NodeList* l, node_t i) except -1:
    """list_push that answers 0 instead of raising when memory runs out, else 1."""
    try:
        list_push(l, i)
    except MemoryError:
        return 0
    return 1


cdef int hand_over(NodeList* done, NodeList* rest) except -1:
    """Finishes a descending pass stopped partway with Kahn's algorithm. The nodes reached
    but not swept are exactly the marked children of the swept ones (done); they and all
    below them lie under the pass, so count_parents from them as roots finds what is left,
    with the right parent counts. Returns 1 once swept; 0, with every mark as it was, if
    memory ran out (the pass then goes on)."""
    cdef Py_ssize_t k, j, n, roots
    cdef node_t v, c
    cdef node_t* kids
    cdef bint ok = True
    for k in range(done.size):
        v = done.items[k]
        kids = T.param[v].kids if T.op[v] == AFFINE else NULL
        n = kids[0] if kids != NULL else 2
        for j in range(1, n + 1):
            c = kids[j] if kids != NULL else (T.lhs[v] if j == 1 else T.rhs[v])
            if ok and c >= 0 and T.waiting[c] != 0:
                ok = list_try_push(rest, c)
                if ok:
                    T.waiting[c] = 0
    roots = rest.size
    if ok:
        try:
            count_parents(rest)
        except MemoryError:
            ok = False
    if not ok:
        for k in range(roots):
            T.waiting[rest.items[k]] = 1
        return 0
    kahn_sweep(rest, ready_roots(rest, roots))
    return 1


cdef int descending_backward(node_t root) except -1:
    """backward() from a DESCENDS root in one pass down the slots: every reached node is
    swept as the pass gets to it (its parents are all above it, so already swept) and
    marks its children reached; the pass ends when no reached node is left below. The
    nodes swept are recorded as the root's order for the cache (if memory allows).

    A small graph far above its leaves would make the pass walk many unreached slots; so
    past a budget of skipped slots (SKIP_SLACK, SKIP_RATIO) the rest goes to hand_over."""
    cdef NodeList done, rest
    cdef node_t i = root, pending = 1, c
    cdef Py_ssize_t budget = SKIP_SLACK, k
    cdef bint recording = True
    memset(&done, 0, sizeof(NodeList))
    memset(&rest, 0, sizeof(NodeList))
    T.grad[root] = 1.0
    T.waiting[root] = 1
    try:
        while pending:
            if i >= AHEAD:
                # prefetch_children(i - AHEAD, True), spelled out (1.5 ns/node faster, measured)
                c = T.lhs[i - AHEAD]
                prefetch(&T.grad[c]); prefetch(&T.value[c]); prefetch(&T.waiting[c])
                c = T.rhs[i - AHEAD]
                prefetch(&T.grad[c]); prefetch(&T.value[c]); prefetch(&T.waiting[c])
            if T.waiting[i]:
                T.waiting[i] = 0
                pending -= 1
                builtin_rule(i)
                pending += mark_children(i)
                if done.size < done.capacity:
                    done.items[done.size] = i
                    done.size += 1
                elif recording:
                    recording = list_try_push(&done, i)
                budget += SKIP_RATIO
            else:
                budget -= 1
                if budget == 0 and recording:
                    if hand_over(&done, &rest):
                        break
                    budget = PY_SSIZE_T_MAX    # out of memory: the pass goes on
            i -= 1
        T.waiting_block[0] = NO_PARENTS
        if recording:
            for k in range(rest.size):
                if not list_try_push(&done, rest.items[k]):
                    return 0
            keep_order(root, &done)
    finally:
        PyMem_Free(done.items)
        PyMem_Free(rest.items)
    return 0


cdef int backward_from(node_t root) except -1:
    """micrograd's backward: root.grad = 1, then every reachable node's rule, each node
    after all its parents.

    A DESCENDS root's graph is swept in one pass down the slots (descending_backward).
    Otherwise Kahn's algorithm orders it: count_parents, then, without CUSTOM nodes, a
    node is swept as soon as its last parent has been (kahn_sweep); with them, the order
    is finished first (waiting[] all 0 again), since their Python code may start another
    backward.

    A node's children never change, so neither does its order: the first backward() from
    a root caches it (in _orders, until the root is freed) and later ones only sweep it.
    The cached orders hold at most max(2 * live nodes, 2**20) slots in all. Right after a
    recompute() (no value changed since), the sweep is the replay's instead: the same
    grads, from the derivatives recompute() recorded (replay_backward)."""
    cdef NodeList queue
    cdef bytes cached
    cdef _Replay replay
    if T.flags[root] & HAS_REPLAY:
        replay = _replays[root]
        if replay.stamp == T.epoch:
            T.grad[root] = 1.0
            replay_backward(replay)
            return 0
    if T.flags[root] & HAS_ORDER:
        cached = _orders[root]
        queue.items = <node_t*>PyBytes_AS_STRING(cached)
        queue.size = queue.capacity = len(cached) // sizeof(node_t)
        T.grad[root] = 1.0
        if T.flags[root] & DESCENDS:
            sweep_builtin(&queue)
            return 0
        return sweep(&queue)
    if T.flags[root] & DESCENDS:
        return descending_backward(root)
    memset(&queue, 0, sizeof(NodeList))
    try:
        list_push(&queue, root)
        if count_parents(&queue):
            finish_order(&queue, ready_roots(&queue, 1))
            T.grad[root] = 1.0
            sweep(&queue)
        else:
            T.grad[root] = 1.0
            kahn_sweep(&queue, ready_roots(&queue, 1))
        keep_order(root, &queue)
    finally:
        PyMem_Free(queue.items)
    return 0


cdef object keep_order(node_t root, NodeList* queue):
    """Caches root's order (queue, parents first) unless the budget is spent; returns it
    as bytes, or None if it could not be made."""
    cdef bytes order
    # (a _backward run by a sweep may have cached it already, by a nested backward)
    if T.flags[root] & HAS_ORDER:
        return _orders[root]
    try:
        order = PyBytes_FromStringAndSize(<char*>queue.items, queue.size * sizeof(node_t))
    except MemoryError:
        return None                     # callers fall back to their own copy
    if T.cached + queue.size <= max(2 * <Py_ssize_t>T.live, 1 << 20):
        _orders[root] = order
        T.flags[root] |= HAS_ORDER
        T.cached += queue.size
    return order


cdef bytes order_of(node_t root):
    """root's reachable slots, parents first: the cached order, or a new one (cached if
    the budget allows)."""
    cdef NodeList queue
    cdef object order
    if T.flags[root] & HAS_ORDER:
        return _orders[root]
    memset(&queue, 0, sizeof(NodeList))
    try:
        list_push(&queue, root)
        count_parents(&queue)
        finish_order(&queue, ready_roots(&queue, 1))
        order = keep_order(root, &queue)
        if order is None:
            raise MemoryError("fastgrad: cannot allocate the order of a graph")
        return order
    finally:
        PyMem_Free(queue.items)


# --------------------------------------------------------------------------- replay
# recompute() turns a root's order into a replay: one Step per node but leaves, parents
# first. Walked backwards it re-evaluates the graph, recording each step's local
# derivatives as it goes (the values are at hand then); walked forwards it is backward(),
# every rule in the one form
#     grad[lhs] += dl * grad[node];  grad[rhs] += dr * grad[node]
# with no op to dispatch on (an AFFINE node's rule, a loop over its terms, is applied
# whole): the same products, added in the same order as the rules' sweep over the order
# adds them, so the grads are the same to the bit. The derivatives
# hold while no value changes: `stamp` is the epoch they were computed at, and backward()
# uses them only while T.epoch has not moved since (assigning data, an optimizer step and
# every recompute() move it). Measured on the ops graph: backward 8 -> 2 ns/node, and
# recompute -2 ns/node from the runs of group_by_op.

cdef class _Replay:
    """What recompute() caches for one root (in _replays, until the root is freed)."""
    cdef Step* steps
    cdef Py_ssize_t size
    cdef uint64_t stamp         # T.epoch when dl/dr were computed; 0: never

    def __dealloc__(self):
        PyMem_Free(self.steps)


cdef inline void add_step(Step* e, node_t node, int32_t op, node_t lhs, node_t rhs) noexcept nogil:
    e.node = node
    e.op = op
    e.lhs = lhs
    e.rhs = rhs
    e.dl = e.dr = 0.0


cdef _Replay make_replay(node_t root):
    """root's replay, from its order. A CUSTOM node with children is refused with
    TypeError: its value was computed by Python code, which a replay cannot rerun."""
    cdef bytes order = order_of(root)
    cdef node_t* items = <node_t*>PyBytes_AS_STRING(order)
    cdef Py_ssize_t n = len(order) // sizeof(node_t), k, size = 0
    cdef node_t v
    cdef _Replay r = _Replay.__new__(_Replay)
    for k in range(n):                  # count the steps, refusing custom ops
        v = items[k]
        if T.op[v] == CUSTOM and T.param[v].kids != NULL:
            raise TypeError(
                f"recompute() cannot re-evaluate the custom op {handle_of(v)._op!r}: "
                "its value was computed by Python code; rebuild the graph instead")
        elif T.op[v] != LEAF and T.op[v] != CUSTOM:
            size += 1
    safe_realloc(<void**>&r.steps, size if size else 1, sizeof(Step))
    for k in range(n):
        v = items[k]
        if T.op[v] == AFFINE:           # (its rule is applied whole: affine_backward)
            add_step(&r.steps[r.size], v, AFFINE, T.param[v].kids[1], -1)
            r.size += 1
        elif T.op[v] != LEAF and T.op[v] != CUSTOM:
            add_step(&r.steps[r.size], v, T.op[v], T.lhs[v], T.rhs[v])
            r.size += 1
    group_by_op(r)
    return r


# group_by_op reorders a replay's steps within windows of this many
cdef enum:
    WINDOW = 64


cdef void group_by_op(_Replay r) noexcept nogil:
    """Reorders r's steps, within windows of WINDOW steps, so that steps of one op come
    together, without changing a bit of any value or grad.

    Two steps commute when neither reads a grad the other adds into and they add into no
    common grad: then either order adds the same terms in the same order into every
    grad. A step reads grad[node] and adds into its children's; it must stay after the
    last step of its window that added into any of those. Each step gets a level, one
    more than those it must stay after (0 if none), and a window is sorted by (level,
    op): every pair that does not commute keeps its order. Backwards, the steps stay
    children first, the re-evaluation order; an AFFINE step, which re-evaluates from
    all its children, counts as adding into all of them. Why: recompute() dispatches on
    each step's op, and a random sequence of ops makes that branch mispredict about
    every other step; in runs, it is predicted. waiting[] holds the levels meanwhile
    (waiting[x]: one more than the level of the last step that added into grad[x]), and
    is 0 again on return."""
    cdef Py_ssize_t m = r.size, f0 = 0, f, n, key, top
    cdef int32_t count[WINDOW * 16 + 1]
    cdef int32_t keys[WINDOW]
    cdef Step window[WINDOW]
    cdef Step* e
    cdef node_t* kids
    cdef node_t j
    cdef int32_t lv
    while f0 < m:
        n = min(<Py_ssize_t>WINDOW, m - f0)
        top = 0
        for f in range(n):
            e = &r.steps[f0 + f]
            lv = max(T.waiting[e.node], T.waiting[e.lhs])
            if e.rhs >= 0:
                lv = max(lv, T.waiting[e.rhs])
            if e.op == AFFINE:
                kids = T.param[e.node].kids
                for j in range(1, kids[0] + 1):
                    lv = max(lv, T.waiting[kids[j]])
                for j in range(1, kids[0] + 1):
                    T.waiting[kids[j]] = lv + 1
            T.waiting[e.lhs] = lv + 1       # (lv is above every level they held)
            if e.rhs >= 0:
                T.waiting[e.rhs] = lv + 1
            keys[f] = lv * 16 + (e.op & 15)   # (were ops to pass 15, two would share runs)
            top = max(top, keys[f])
        for f in range(n):
            e = &r.steps[f0 + f]
            T.waiting[e.lhs] = 0
            if e.rhs >= 0:
                T.waiting[e.rhs] = 0
            if e.op == AFFINE:
                kids = T.param[e.node].kids
                for j in range(1, kids[0] + 1):
                    T.waiting[kids[j]] = 0
        # a stable counting sort of the window by key
        memset(count, 0, (top + 2) * sizeof(int32_t))
        for f in range(n):
            count[keys[f] + 1] += 1
        for key in range(top + 1):
            count[key + 1] += count[key]
        for f in range(n):
            window[count[keys[f]]] = r.steps[f0 + f]
            count[keys[f]] += 1
        memcpy(&r.steps[f0], window, n * sizeof(Step))
        f0 += n


cdef _Replay replay_of(node_t root):
    """root's cached replay, or a new one (cached if the budget allows)."""
    cdef _Replay r
    if T.flags[root] & HAS_REPLAY:
        return _replays[root]
    r = make_replay(root)
    if T.replayed + r.size <= max(2 * <Py_ssize_t>T.live, 1 << 20):
        _replays[root] = r
        T.flags[root] |= HAS_REPLAY
        T.replayed += r.size
    return r


cdef inline int replay_forward(Step* e) except -1:
    """Re-evaluates e's node from its children's values and records e's derivatives."""
    cdef real_t a = T.value[e.lhs], b, out
    cdef int32_t o = e.op
    if o == ADD:
        T.value[e.node] = add_forward(a, T.value[e.rhs])
        e.dl = e.dr = 1.0
    elif o == MUL:
        b = T.value[e.rhs]
        T.value[e.node] = mul_forward(a, b)
        e.dl = b
        e.dr = a
    elif o == POW:
        pow_forward(a, T.param[e.node].exponent, &T.value[e.node])
        e.dl = pow_derivative(a, T.param[e.node].exponent)
    elif o == RELU:
        out = T.value[e.node] = relu_forward(a)
        e.dl = relu_derivative(out)
    elif o == TANH:
        out = T.value[e.node] = tanh_forward(a)
        e.dl = tanh_derivative(out)
    elif o == EXP:
        exp_forward(a, &T.value[e.node])
        e.dl = T.value[e.node]
    elif o == AFFINE:
        T.value[e.node] = affine_forward(T.param[e.node].kids)
    elif o == LOG:
        log_forward(a, &T.value[e.node])
        e.dl = log_derivative(a)
    elif o == SIGMOID:
        out = T.value[e.node] = sigmoid_forward(a)
        e.dl = sigmoid_derivative(out)
    elif o == SQRT:
        sqrt_forward(a, &T.value[e.node])
        e.dl = sqrt_derivative(T.value[e.node])
    elif o == ABS:
        T.value[e.node] = abs_forward(a)
        e.dl = abs_derivative(a)
    elif o == POWV:
        b = T.value[e.rhs]
        powv_forward(a, b, &T.value[e.node])
        e.dl = powv_base_derivative(a, b)
        e.dr = powv_exponent_derivative(a, T.value[e.node])
    return 0


cdef int recompute_from(node_t root) except -1:
    """Re-evaluates every node under root, children first, from the leaves' current data,
    and zeroes the grads of the nodes it re-evaluated: the graph is then as if built anew
    from those leaves. A graph with a custom op (its value computed by Python code) is
    refused up front with TypeError, whatever the values. Otherwise all or nothing: if an
    op raises (0 ** -1, exp overflow), every value and grad is put back and the exception
    propagates. One pass backwards over the replay, prefetching ahead."""
    cdef _Replay r = replay_of(root)
    cdef Step* steps = r.steps
    cdef Py_ssize_t s = r.size - 1, k
    cdef real_t* saved = NULL           # saved[2s], saved[2s + 1]: value and grad at s
    cdef Step* e
    safe_realloc(<void**>&saved, 2 * r.size + 2, sizeof(real_t))
    r.stamp = 0                         # (its derivatives are about to be overwritten)
    try:
        while s >= 0:
            if s >= AHEAD:
                e = &steps[s - AHEAD]
                prefetch(&T.value[e.node])
                prefetch(&T.grad[e.node])
                prefetch(&T.value[e.lhs])
                prefetch(&T.value[e.rhs])
            e = &steps[s]
            saved[2 * s] = T.value[e.node]
            saved[2 * s + 1] = T.grad[e.node]
            T.grad[e.node] = 0.0
            replay_forward(e)
            s -= 1
    except BaseException:
        for k in range(r.size - 1, s - 1, -1):  # what this pass touched, the failed step too
            e = &steps[k]
            T.value[e.node] = saved[2 * k]
            T.grad[e.node] = saved[2 * k + 1]
        raise
    finally:
        PyMem_Free(saved)
    T.epoch += 1
    r.stamp = T.epoch
    return 0


cdef void replay_backward(_Replay r) noexcept nogil:
    """backward() from a replay's root, with the derivatives its recompute() recorded
    (current: r.stamp == T.epoch)."""
    cdef Step* steps = r.steps
    cdef Step* e
    cdef Py_ssize_t s
    cdef real_t g
    for s in range(r.size):
        if s + AHEAD < r.size:
            e = &steps[s + AHEAD]
            prefetch(&T.grad[e.lhs])
            prefetch(&T.grad[e.rhs])
        e = &steps[s]
        if e.op == AFFINE:              # its rule is a loop over its terms
            affine_backward(e.node)
            continue
        g = T.grad[e.node]
        T.grad[e.lhs] += e.dl * g
        T.grad[e.rhs] += e.dr * g


# -------------------------------------------------------------------------- handles

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


cdef inline Value new_handle():
    # Handles hold no references that can form cycles, unless a Python _backward is
    # assigned (then the setter tracks them); they stay out of the cyclic GC until then.
    cdef Value h = Value.__new__(Value)
    PyObject_GC_UnTrack(h)
    return h


cdef inline Value attach(Value h, node_t i):
    h.slot = i
    T.handle[i] = <PyObject*>h
    T.refs[i] += 1
    return h


cdef Value handle_of(node_t i):
    """The live handle of slot i, made if it has none (one handle per slot at most)."""
    if T.handle[i] != NULL:
        return <Value>T.handle[i]
    return attach(new_handle(), i)


cdef object binary(uint8_t op, Value a, object b):
    """a (op) b for ADD and MUL; a number b becomes a leaf node, as in micrograd."""
    cdef real_t x
    cdef node_t lhs = check_slot(a), rhs
    cdef Value h
    if type(b) is Value:
        rhs = check_slot(<Value>b)
        x = T.value[rhs]
    elif not as_real(b, &x):
        return NotImplemented
    else:
        rhs = -1
    h = new_handle()
    reserve(2)
    if not recording():
        return attach(h, push(LEAF, add_forward(T.value[lhs], x) if op == ADD else
                              mul_forward(T.value[lhs], x), -1, -1))
    if rhs < 0:
        rhs = push(LEAF, x, -1, -1)
    if op == ADD:
        return attach(h, push(ADD, add_forward(T.value[lhs], x), lhs, rhs))
    return attach(h, push(MUL, mul_forward(T.value[lhs], x), lhs, rhs))


cdef object unary(uint8_t op, real_t value, Value a):
    """A new node op(a) of the given value (a leaf under no_grad)."""
    cdef Value h = new_handle()
    reserve(1)
    if not recording():
        return attach(h, push(LEAF, value, -1, -1))
    return attach(h, push(op, value, a.slot, -1))


cdef object power_of_values(Value a, Value b):
    cdef real_t r
    cdef Value h
    powv_forward(T.value[check_slot(a)], T.value[check_slot(b)], &r)
    h = new_handle()
    reserve(1)
    if not recording():
        return attach(h, push(LEAF, r, -1, -1))
    return attach(h, push(POWV, r, a.slot, b.slot))


cdef inline node_t check_slot(Value v) except -1:
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


def _restore(data, grad, label):
    """Unpickles a leaf Value."""
    v = Value(data, label=label)
    v.grad = grad
    return v


@cython.final
@cython.freelist(1024)
cdef class Value:
    """ stores a single scalar value and its gradient """
    cdef node_t slot
    cdef object _fn     # the Python _backward assigned to this node, or None

    def __cinit__(self):
        self.slot = -1

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
        PyObject_GC_UnTrack(self)
        reserve(1)
        if n == 0 and is_empty(_op):
            i = push(LEAF, x, -1, -1)
        else:
            if n > 0:
                safe_realloc(<void**>&arr, n + 1, sizeof(node_t))
                arr[0] = n
                for k in range(n):
                    arr[k + 1] = (<Value>kids[k]).slot
            i = push(CUSTOM, x, -1, -1)
            T.flags[i] &= ~DESCENDS         # its rule is Python code: the general sweep
            T.param[i].kids = arr
            for k in range(n):
                add_ref(arr[k + 1])
        attach(self, i)
        if not is_empty(_op):
            self._op = _op
        if not is_empty(label):
            self.label = label

    def __dealloc__(self):
        if self.slot >= 0:
            T.handle[self.slot] = NULL
            release(self.slot)

    # --- attributes -----------------------------------------------------------------

    @property
    def data(self):
        return T.value[check_slot(self)]

    @data.setter
    def data(self, value):
        T.value[check_slot(self)] = real_or_raise(value, "data")
        T.epoch += 1

    @property
    def grad(self):
        return T.grad[check_slot(self)]

    @grad.setter
    def grad(self, value):
        T.grad[check_slot(self)] = real_or_raise(value, "grad")

    @property
    def label(self):
        cdef node_t i = check_slot(self)
        return _labels[i] if T.flags[i] & HAS_LABEL else ''

    @label.setter
    def label(self, value):
        cdef node_t i = check_slot(self)
        _labels[i] = value
        T.flags[i] |= HAS_LABEL

    @property
    def _op(self):
        cdef node_t i = check_slot(self)
        cdef real_t k
        if T.flags[i] & HAS_OPSTR:
            return _opstrs[i]
        if T.op[i] == POW:
            k = T.param[i].exponent
            if T.flags[i] & POW_BOOL:
                return _pow_symbol(k != 0.0)
            if T.flags[i] & POW_INT:
                return _pow_symbol(int(k))
            return _pow_symbol(k)
        return _SYMBOL[T.op[i]]

    @_op.setter
    def _op(self, value):
        cdef node_t i = check_slot(self)
        _opstrs[i] = value
        T.flags[i] |= HAS_OPSTR

    @property
    def _prev(self):
        cdef node_t i = check_slot(self), k
        cdef node_t* kids
        cdef set s = set()
        if has_kids(T.op[i]):
            kids = T.param[i].kids
            if kids != NULL:
                for k in range(1, kids[0] + 1):
                    s.add(handle_of(kids[k]))
        else:
            if T.lhs[i] >= 0:
                s.add(handle_of(T.lhs[i]))
            if T.rhs[i] >= 0:
                s.add(handle_of(T.rhs[i]))
        return s

    @property
    def _backward(self):
        check_slot(self)
        if T.flags[self.slot] & HAS_FN:
            return self._fn
        return self._apply_rule

    @_backward.setter
    def _backward(self, fn):
        cdef node_t i = check_slot(self)
        if not callable(fn):
            raise TypeError(f"_backward must be callable, not {type(fn).__name__!r}")
        self._fn = fn
        T.flags[i] |= HAS_FN
        if not PyObject_GC_IsTracked(self):
            PyObject_GC_Track(self)
        if T.refs[i] > 1 and not T.flags[i] & PINNED:
            pin(i)

    def _apply_rule(self):
        """Applies this node's local chain rule once (what micrograd's _backward does)."""
        apply_rule(check_slot(self))

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
        cdef Value out
        if mod is not None:
            raise TypeError("pow() with a modulus is not supported for Value")
        if type(other) is Value:
            return power_of_values(self, other)
        if not isinstance(other, (int, float)):
            raise TypeError(f"unsupported exponent type {type(other).__name__!r}: "
                            "int, float or Value")
        k = other
        pow_forward(T.value[check_slot(self)], k, &r)
        out = unary(POW, r, self)
        if T.op[out.slot] == POW:           # (under no_grad it is a leaf)
            T.param[out.slot].exponent = k
            if PyBool_Check(other):
                T.flags[out.slot] |= POW_BOOL
            elif PyLong_Check(other):
                T.flags[out.slot] |= POW_INT
        return out

    def __rpow__(self, other, mod):
        # number ** self: the number becomes a leaf, as in every binary op
        if mod is not None:
            raise TypeError("pow() with a modulus is not supported for Value")
        if not isinstance(other, (int, float)):
            return NotImplemented
        return power_of_values(Value(other), self)

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
                m = push(MUL, mul_forward(T.value[(<Value>w[k]).slot], T.value[rhs]),
                         (<Value>w[k]).slot, rhs)
                acc = push(ADD, add_forward(T.value[acc], T.value[m]), acc, m)
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
        i = push(AFFINE, affine_forward(kids), -1, -1)
        T.param[i].kids = kids
        for k in range(1, 2 * n + 2):
            add_ref(kids[k])
            T.flags[i] &= descends_to(i, kids[k]) | ~DESCENDS
        return attach(h, i)

    def relu(self):
        return unary(RELU, relu_forward(T.value[check_slot(self)]), self)

    def tanh(self):
        return unary(TANH, tanh_forward(T.value[check_slot(self)]), self)

    def exp(self):
        cdef real_t r
        exp_forward(T.value[check_slot(self)], &r)
        return unary(EXP, r, self)

    def log(self):
        cdef real_t r
        log_forward(T.value[check_slot(self)], &r)
        return unary(LOG, r, self)

    def sigmoid(self):
        return unary(SIGMOID, sigmoid_forward(T.value[check_slot(self)]), self)

    def sqrt(self):
        cdef real_t r
        sqrt_forward(T.value[check_slot(self)], &r)
        return unary(SQRT, r, self)

    def __abs__(self):
        return unary(ABS, abs_forward(T.value[check_slot(self)]), self)

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
        expression had been built again. What it needs is cached per root (its replay), so
        a training loop can build its graph once, then recompute() / backward() / update
        the leaves, step after step; the backward() right after it applies the local
        derivatives recompute() recorded (the same grads, to the bit, faster)."""
        recompute_from(check_slot(self))

    def __repr__(self):
        return f"Value(data={self.data}, grad={self.grad})"

    def __reduce__(self):
        if T.op[check_slot(self)] != LEAF:
            raise TypeError("only leaf Values can be pickled (a graph node would lose its children)")
        return (_restore, (self.data, self.grad, self.label))


# ----------------------------------------------------------------------- optimizers

cdef class _Params:
    """The slots of a list of Values, for optimizers' C loops (fastgrad.optim). Holds
    the Values, so that their slots stay theirs, and per-parameter optimizer state."""
    cdef readonly list values
    cdef node_t* slot
    cdef real_t* m          # Adam: first moment of each parameter's grad
    cdef real_t* v          # Adam: second moment
    cdef Py_ssize_t n

    def __cinit__(self, params):
        cdef Py_ssize_t k
        self.values = list(params)
        self.n = len(self.values)
        for p in self.values:
            if type(p) is not Value:
                raise TypeError(f"parameters must be Values, not {type(p).__name__!r}")
            check_slot(<Value>p)
        safe_realloc(<void**>&self.slot, self.n + 1, sizeof(node_t))
        safe_realloc(<void**>&self.m, self.n + 1, sizeof(real_t))
        safe_realloc(<void**>&self.v, self.n + 1, sizeof(real_t))
        for k in range(self.n):
            self.slot[k] = (<Value>self.values[k]).slot
            self.m[k] = self.v[k] = 0.0

    def __dealloc__(self):
        PyMem_Free(self.slot)
        PyMem_Free(self.m)
        PyMem_Free(self.v)

    def zero_grad(self):
        cdef Py_ssize_t k
        for k in range(self.n):
            T.grad[self.slot[k]] = 0.0

    def sgd(self, real_t lr):
        # p.data -= lr * p.grad, micrograd's update
        cdef Py_ssize_t k
        cdef node_t s
        for k in range(self.n):
            s = self.slot[k]
            T.value[s] -= lr * T.grad[s]
        T.epoch += 1

    def adam(self, real_t lr, real_t beta1, real_t beta2, real_t eps, real_t weight_decay,
             long step):
        # fastgrad.optim.Adam's update; bias corrections 1 - beta ** step, PyTorch's form
        cdef Py_ssize_t k
        cdef node_t s
        cdef real_t g
        cdef real_t step_size = lr / (1.0 - pow(beta1, step))
        cdef real_t correction2_sqrt = sqrt(1.0 - pow(beta2, step))
        for k in range(self.n):
            s = self.slot[k]
            g = T.grad[s] + weight_decay * T.value[s]
            self.m[k] = beta1 * self.m[k] + (1.0 - beta1) * g
            self.v[k] = beta2 * self.v[k] + (1.0 - beta2) * g * g
            T.value[s] -= step_size * self.m[k] / (sqrt(self.v[k]) / correction2_sqrt + eps)
        T.epoch += 1


# ------------------------------------------------------------------------ test hooks

def _tape_stats():
    """Counts of the arena: live slots, slots handed out, capacity, free slots below size,
    and the slots held by the orders that root handles cache."""
    return {'live': T.live, 'size': T.size, 'capacity': T.capacity, 'free': T.size - T.live,
            'cached': T.cached, 'replayed': T.replayed}


def _test_free_list_length():
    """Walks the free list; reserve() relies on its length being size - live."""
    cdef node_t j = T.free_head, n = 0
    while j >= 0:
        if not T.flags[j] & FREE:
            raise AssertionError(f"slot {j} is on the free list without the FREE flag")
        n += 1
        j = T.lhs[j]
    return n


def _test_fail_allocs(n):
    """Makes the allocation after the next n fail with MemoryError (-1 turns it off)."""
    global _allocs_until_failure
    _allocs_until_failure = n


def _test_descends(Value v):
    """Whether v's graph descends the slots (its backward is one pass down the arena)."""
    return bool(T.flags[check_slot(v)] & DESCENDS)


def _test_replay_current(Value v):
    """Whether v has a replay whose derivatives are current: its next backward() is the
    replay's sweep."""
    cdef node_t i = check_slot(v)
    return bool(T.flags[i] & HAS_REPLAY) and (<_Replay>_replays[i]).stamp == T.epoch


def _test_counts_clear():
    """Whether every waiting[] count is 0 and the sentinel intact, as outside a pass."""
    cdef node_t j
    if T.size and T.waiting_block[0] != NO_PARENTS:
        return False
    for j in range(T.size):
        if T.waiting[j] != 0:
            return False
    return True
