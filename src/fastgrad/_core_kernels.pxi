# The ops' kernels and the dispatchers over op codes. (Part of _core.pyx.)
#
# One block per op (its math is in fastgrad.ops.DERIVATIVE): the forward kernel, one local
# derivative per child (d out / d child, from the values it needs), and the rule, which
# always has the form  grad[child] += derivative * grad[out].  The rules' sweep and the
# replay (which records the derivatives while it re-evaluates) call the same derivative
# functions, so their grads agree to the bit by construction. Forward kernels that can
# fail raise Python's exception for the same float operation.

# ADD: out = a + b
cdef inline real_t add_forward(real_t a, real_t b) noexcept nogil:
    return a + b

cdef inline real_t add_da() noexcept nogil:
    return 1.0                          # (1 * g is g, to the bit)

cdef inline real_t add_db() noexcept nogil:
    return 1.0

cdef inline void add_rule(node_t i) noexcept nogil:
    cdef real_t g = tape.grad[i]
    tape.grad[tape.lhs[i]] += add_da() * g
    tape.grad[tape.rhs[i]] += add_db() * g


# MUL: out = a * b
cdef inline real_t mul_forward(real_t a, real_t b) noexcept nogil:
    return a * b

cdef inline real_t mul_da(real_t b) noexcept nogil:
    return b

cdef inline real_t mul_db(real_t a) noexcept nogil:
    return a

cdef inline void mul_rule(node_t i) noexcept nogil:
    cdef real_t g = tape.grad[i]
    cdef node_t a = tape.lhs[i], b = tape.rhs[i]
    tape.grad[a] += mul_da(tape.value[b]) * g
    tape.grad[b] += mul_db(tape.value[a]) * g


# POW: out = a ** k, k a constant, with Python's float semantics for the forward value
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

cdef inline real_t pow_da(real_t a, real_t k) noexcept nogil:
    # k * a ** (k - 1) in IEEE pow (inf or nan, never an exception) since a sweep cannot
    # stop halfway; for k = 2, pow(a, 1) is exactly a, so the call is skipped
    return 2.0 * a if k == 2.0 else k * pow(a, k - 1.0)

cdef inline void pow_rule(node_t i) noexcept nogil:
    cdef node_t a = tape.lhs[i]
    tape.grad[a] += pow_da(tape.value[a], tape.param[i].exponent) * tape.grad[i]


# RELU: out = 0 if a < 0 else a (micrograd keeps -0.0 and nan as they are)
cdef inline real_t relu_forward(real_t a) noexcept nogil:
    return 0.0 if a < 0.0 else a

cdef inline real_t relu_da(real_t out) noexcept nogil:
    return <real_t>(out > 0.0)          # a number: 0 * inf must stay nan as in micrograd

cdef inline void relu_rule(node_t i) noexcept nogil:
    tape.grad[tape.lhs[i]] += relu_da(tape.value[i]) * tape.grad[i]


# TANH: out = tanh(a), C's tanh saturating to +-1 instead of overflowing
cdef inline real_t tanh_forward(real_t a) noexcept nogil:
    return tanh(a)

cdef inline real_t tanh_da(real_t out) noexcept nogil:
    return 1.0 - out * out

cdef inline void tanh_rule(node_t i) noexcept nogil:
    tape.grad[tape.lhs[i]] += tanh_da(tape.value[i]) * tape.grad[i]


# EXP: out = exp(a), raising OverflowError as math.exp does
cdef int exp_forward(real_t a, real_t* out) except -1:
    out[0] = exp(a)
    if isinf(out[0]) and isfinite(a):
        raise OverflowError("math range error")
    return 0

cdef inline real_t exp_da(real_t out) noexcept nogil:
    return out

cdef inline void exp_rule(node_t i) noexcept nogil:
    tape.grad[tape.lhs[i]] += exp_da(tape.value[i]) * tape.grad[i]


# AFFINE: out = b + w0 * x0 + w1 * x1 + ..., kids = [n, b, w0, x0, w1, x1, ...]; summed
# left to right, so the value is micrograd's sum((w * x ...), b) to the last bit
cdef inline real_t affine_forward(node_t* kids) noexcept nogil:
    cdef node_t k
    cdef real_t acc = tape.value[kids[1]]
    for k in range(2, kids[0], 2):
        acc = acc + tape.value[kids[k]] * tape.value[kids[k + 1]]
    return acc

cdef inline real_t affine_dbias() noexcept nogil:
    return 1.0

cdef inline real_t affine_dw(real_t x) noexcept nogil:
    return x

cdef inline real_t affine_dx(real_t w) noexcept nogil:
    return w

cdef inline void affine_rule(node_t i) noexcept nogil:
    cdef node_t* kids = tape.param[i].kids
    cdef real_t g = tape.grad[i]
    cdef node_t k, w, x
    tape.grad[kids[1]] += affine_dbias() * g
    for k in range(2, kids[0], 2):
        w = kids[k]
        x = kids[k + 1]
        tape.grad[w] += affine_dw(tape.value[x]) * g
        tape.grad[x] += affine_dx(tape.value[w]) * g


cdef int domain_error(object math_function, real_t a) except -1:
    """Raises the ValueError that math_function (math.log, math.sqrt) raises at a, which is
    outside its domain: its message differs between Pythons ('math domain error' up to
    3.13, 'expected a positive input, got 0.0' from 3.14)."""
    math_function(a)
    raise ValueError("math domain error")      # (only if math_function did not raise)


# LOG: out = log(a), raising ValueError for a <= 0 as math.log does
cdef int log_forward(real_t a, real_t* out) except -1:
    if a <= 0.0:
        return domain_error(_math.log, a)
    out[0] = log(a)
    return 0

cdef inline real_t log_da(real_t a) noexcept nogil:
    return 1.0 / a

cdef inline void log_rule(node_t i) noexcept nogil:
    tape.grad[tape.lhs[i]] += log_da(tape.value[tape.lhs[i]]) * tape.grad[i]


# SIGMOID: out = 1 / (1 + exp(-a)); for a < 0 as exp(a) / (1 + exp(a)), so that no exp
# overflows: finite for every finite a, exactly 0 or 1 far out
cdef inline real_t sigmoid_forward(real_t a) noexcept nogil:
    cdef real_t e
    if a >= 0.0:
        return 1.0 / (1.0 + exp(-a))
    e = exp(a)
    return e / (1.0 + e)

cdef inline real_t sigmoid_da(real_t out) noexcept nogil:
    return out * (1.0 - out)

cdef inline void sigmoid_rule(node_t i) noexcept nogil:
    tape.grad[tape.lhs[i]] += sigmoid_da(tape.value[i]) * tape.grad[i]


# SQRT: out = sqrt(a), raising ValueError for a < 0 as math.sqrt does
cdef int sqrt_forward(real_t a, real_t* out) except -1:
    if a < 0.0:
        return domain_error(_math.sqrt, a)
    out[0] = sqrt(a)
    return 0

cdef inline real_t sqrt_da(real_t out) noexcept nogil:
    return 1.0 / (2.0 * out)            # inf at 0

cdef inline void sqrt_rule(node_t i) noexcept nogil:
    tape.grad[tape.lhs[i]] += sqrt_da(tape.value[i]) * tape.grad[i]


# ABS: out = |a|
cdef inline real_t abs_forward(real_t a) noexcept nogil:
    return fabs(a)

cdef inline real_t abs_da(real_t a) noexcept nogil:
    # sign(a): 0 at 0 (a subgradient, PyTorch's choice), nan at nan
    return a if isnan(a) else <real_t>(a > 0.0) - <real_t>(a < 0.0)

cdef inline void abs_rule(node_t i) noexcept nogil:
    tape.grad[tape.lhs[i]] += abs_da(tape.value[tape.lhs[i]]) * tape.grad[i]


# POWV: out = a ** b, both Values; a must be positive (then the result is real and
# d/db = out * log(a) exists), else ValueError; overflow raises as for floats. IEEE pow
# and log in the derivatives: a base made non-positive later (by assigning data) gives
# nan or inf
cdef int powv_forward(real_t a, real_t b, real_t* out) except -1:
    if a <= 0.0:
        raise ValueError(f"the base of Value ** Value must be positive, not {a!r}")
    out[0] = pow(a, b)
    if isinf(out[0]) and isfinite(a) and isfinite(b):
        raise OverflowError(f"{a!r} ** {b!r}: numerical result out of range")
    return 0

cdef inline real_t powv_da(real_t a, real_t b) noexcept nogil:
    return b * pow(a, b - 1.0)

cdef inline real_t powv_db(real_t a, real_t out) noexcept nogil:
    return out * log(a)

cdef inline void powv_rule(node_t i) noexcept nogil:
    cdef node_t a = tape.lhs[i], b = tape.rhs[i]
    cdef real_t g = tape.grad[i]
    tape.grad[a] += powv_da(tape.value[a], tape.value[b]) * g
    tape.grad[b] += powv_db(tape.value[a], tape.value[i]) * g


# LOCAL: a node whose local derivatives were given when it was made (microgpt's
# Value(data, children, local_grads), and the fused helpers of fastgrad.functional); its
# maker computed its value, and nothing re-evaluates it. kids = [n, c1 .. cn], then d1 .. dn
cdef inline node_t local_rule_marking(node_t i, uint8_t* reached) noexcept nogil:
    """The rule, grad[c_k] += d_k * grad[i]; with reached (the descending pass), it marks
    the children reached in the same loop and returns how many were not before (as
    mark_children does)."""
    cdef node_t* kids = tape.param[i].kids
    cdef real_t* d = local_grads_of(kids)
    cdef real_t* grad = tape.grad      # (a local: a store through tape.grad would make
    cdef real_t g = grad[i]            # the compiler reload it for every child)
    cdef node_t k, c, new = 0
    for k in range(kids[0]):
        c = kids[k + 1]
        grad[c] += d[k] * g
        if reached != NULL:
            new += reached[c] == 0
            reached[c] = 1
    return new


cdef node_t row_rule_marking(node_t i, uint8_t* reached) noexcept nogil:
    """The rule of a row of a linear call (IN_CHUNK), whose derivatives by its weights
    are its chunk's (x's values) and those by x its own: the same sums in the same order
    as a LOCAL node's. With reached (the descending pass), the marks: the weights (odd
    children) unless they are leaves (LEAF_WEIGHTS: no rule to reach), and x (even
    children) only if no row of the chunk has marked it in this pass
    (ChunkHeader.marked); a row's bias (ROW_BIAS) whatever LEAF_WEIGHTS says. A
    RELU_ROW is relu(sum): by the chain rule its derivatives are the sum's times
    relu_da(value), applied to grad first, as the ReLU node of relu(linear(...)) would
    give it to the row (so the products are the same); a SCALED_ROW's is first
    multiplied by its chunk's scale, as the '*' node of mul(linear(...), c) would."""
    cdef node_t* kids = tape.param[i].kids
    cdef ChunkHeader* chunk = <ChunkHeader*>chunk_of(kids)
    cdef real_t* dw = chunk_x_grads(<char*>chunk)
    cdef real_t* dx = local_grads_of(kids)
    cdef real_t* grad = tape.grad
    cdef real_t g = grad[i]
    cdef node_t n = kids[0], k, c, new = 0
    if tape.flags[i] & (RELU_ROW | SCALED_ROW):
        if tape.flags[i] & RELU_ROW:
            g = relu_da(tape.value[i]) * g
        else:
            g = mul_da(chunk.scale) * g
    cdef const node_t* pair = &kids[1]  # (w_k, x_k), walked by pointer: indexing kids
    for k in range(n // 2):             # at 2k + 1 and 2k + 2 cost gcc a register copy
        grad[pair[0]] += dw[k] * g      # and two address computations a term
        grad[pair[1]] += dx[k] * g
        pair += 2
    if reached == NULL:
        return 0
    if not tape.flags[i] & LEAF_WEIGHTS:
        for k in range(1, n, 2):
            c = kids[k]
            new += reached[c] == 0
            reached[c] = 1
    elif tape.flags[i] & ROW_BIAS:
        c = kids[n - 1]
        new += reached[c] == 0
        reached[c] = 1
    if chunk.marked != tape.passes:
        chunk.marked = tape.passes
        for k in range(2, n + 1, 2):
            c = kids[k]
            new += reached[c] == 0
            reached[c] = 1
    return new


# The descending pass calls it through a pointer, which gcc cannot inline: inlined into
# its loop, the row's loops left that loop fewer registers for its own (micrograd's demo
# graph, which has no row, swept 3.5% more instructions, by callgrind). A row has many
# children to pay for the call.
cdef node_t (*row_rule_out_of_line)(node_t, uint8_t*) noexcept nogil
row_rule_out_of_line = row_rule_marking


cdef inline void local_rule(node_t i) noexcept nogil:
    if tape.flags[i] & IN_CHUNK:
        row_rule_marking(i, NULL)
    else:
        local_rule_marking(i, NULL)


# LEAF and CUSTOM have no built-in rule: a CUSTOM node's rule is its Python _backward,
# which the node's handle holds (HAS_FN), as any node's assigned _backward is.


# ---------------------------------------------------------------------- dispatchers
# Every dispatcher names every op; its default branch is a bug: it stops the process in
# the debug build and is unreachable in a release build.

cdef inline void unknown_op(node_t i) noexcept nogil:
    invariant(False, b"a dispatcher got an op code it has no case for")
    unreachable()


# FASTGRAD_TRACE=1 in the environment of a debug build prints every node a sweep applies
# (on when set to anything but "" or "0", as fastgrad._engine.env_flag reads flags)
cdef const char* _trace_flag = getenv(b"FASTGRAD_TRACE")
cdef bint tracing = DEBUG and _trace_flag != NULL and _trace_flag[0] != 0 and \
    strcmp(_trace_flag, b"0") != 0


cdef inline void trace(const char* what, node_t i) noexcept nogil:
    if DEBUG and tracing:
        fprintf(stderr, b"fastgrad %s: node %d op %d value %.17g grad %.17g\n",
                what, i, <int>tape.op[i], tape.value[i], tape.grad[i])


cdef void apply_extension_rule(node_t i) noexcept nogil:
    """The rules of the ops beyond micrograd's, out of line: apply_builtin_rule, inlined
    into every sweep, stays small (inlined, it is ~2 ns/node faster on micrograd's ops)."""
    cdef uint8_t o = tape.op[i]
    if o == AFFINE:
        affine_rule(i)
    elif o == LOG:
        log_rule(i)
    elif o == SIGMOID:
        sigmoid_rule(i)
    elif o == SQRT:
        sqrt_rule(i)
    elif o == ABS:
        abs_rule(i)
    elif o == POWV:
        powv_rule(i)
    elif o == LOCAL:
        local_rule(i)
    elif o == CUSTOM:
        pass                            # (a CUSTOM node without a Python _backward)
    else:
        unknown_op(i)


cdef inline void apply_builtin_rule(node_t i) noexcept nogil:
    """Node i's built-in rule (never Python code)."""
    cdef uint8_t o = tape.op[i]
    check_node(i)
    trace(b"rule", i)
    if o == ADD:
        add_rule(i)
    elif o == MUL:
        mul_rule(i)
    elif o == POW:
        pow_rule(i)
    elif o == RELU:
        relu_rule(i)
    elif o == TANH:
        tanh_rule(i)
    elif o == EXP:
        exp_rule(i)
    elif o != LEAF:
        apply_extension_rule(i)


cdef int apply_rule(node_t i) except -1:
    """Node i's rule: its Python _backward if it holds one (any op, as in micrograd),
    else its op's."""
    cdef Value h
    if tape.flags[i] & HAS_FN:
        check_node(i)
        trace(b"python rule", i)
        h = <Value>tape.handle[i]
        h._fn()
    else:
        apply_builtin_rule(i)
    return 0


cdef inline bint forward_can_raise(int32_t o) noexcept nogil:
    # the ops whose forward raises outside its domain or on overflow (the *_forward
    # functions declared except -1); every other op's forward is total
    return o == POW or o == EXP or o == LOG or o == SQRT or o == POWV


cdef inline int replay_forward(Step* e, int32_t o) except -1:
    """Re-evaluates e's node from its children's values and records e's derivatives (o
    is e.op: given as a constant, the dispatch below folds to its one case)."""
    cdef real_t a = tape.value[e.lhs], b, out
    cdef real_t* result = &tape.value[e.node]
    if o == ADD:
        result[0] = add_forward(a, tape.value[e.rhs])
        e.dl = add_da()
        e.dr = add_db()
    elif o == MUL:
        b = tape.value[e.rhs]
        result[0] = mul_forward(a, b)
        e.dl = mul_da(b)
        e.dr = mul_db(a)
    elif o == POW:
        pow_forward(a, tape.param[e.node].exponent, result)
        e.dl = pow_da(a, tape.param[e.node].exponent)
    elif o == RELU:
        out = result[0] = relu_forward(a)
        e.dl = relu_da(out)
    elif o == TANH:
        out = result[0] = tanh_forward(a)
        e.dl = tanh_da(out)
    elif o == EXP:
        exp_forward(a, result)
        e.dl = exp_da(result[0])
    elif o == AFFINE:                   # (its rule is applied whole: affine_rule)
        result[0] = affine_forward(tape.param[e.node].kids)
    elif o == LOG:
        log_forward(a, result)
        e.dl = log_da(a)
    elif o == SIGMOID:
        out = result[0] = sigmoid_forward(a)
        e.dl = sigmoid_da(out)
    elif o == SQRT:
        sqrt_forward(a, result)
        e.dl = sqrt_da(result[0])
    elif o == ABS:
        result[0] = abs_forward(a)
        e.dl = abs_da(a)
    elif o == POWV:
        b = tape.value[e.rhs]
        powv_forward(a, b, result)
        e.dl = powv_da(a, b)
        e.dr = powv_db(a, result[0])
    else:                               # (LEAF, CUSTOM and LOCAL nodes are not steps)
        unknown_op(e.node)
    return 0


cdef tuple local_grads(node_t i):
    """Node i's local derivatives, one per child in the order of its children (what
    microgpt's Value holds as _local_grads), from the op's derivative functions at the
    current values; a LOCAL node's are its constants."""
    cdef uint8_t o = tape.op[i]
    cdef node_t a = tape.lhs[i], b = tape.rhs[i], k
    cdef node_t* kids
    cdef real_t* d
    cdef real_t* dw
    cdef real_t gate
    if o == LEAF:
        return ()
    elif o == ADD:
        return (add_da(), add_db())
    elif o == MUL:
        return (mul_da(tape.value[b]), mul_db(tape.value[a]))
    elif o == POW:
        return (pow_da(tape.value[a], tape.param[i].exponent),)
    elif o == RELU:
        return (relu_da(tape.value[i]),)
    elif o == TANH:
        return (tanh_da(tape.value[i]),)
    elif o == EXP:
        return (exp_da(tape.value[i]),)
    elif o == AFFINE:
        kids = tape.param[i].kids
        out = [affine_dbias()]
        for k in range(2, kids[0], 2):
            out.append(affine_dw(tape.value[kids[k + 1]]))
            out.append(affine_dx(tape.value[kids[k]]))
        return tuple(out)
    elif o == LOG:
        return (log_da(tape.value[a]),)
    elif o == SIGMOID:
        return (sigmoid_da(tape.value[i]),)
    elif o == SQRT:
        return (sqrt_da(tape.value[i]),)
    elif o == ABS:
        return (abs_da(tape.value[a]),)
    elif o == POWV:
        return (powv_da(tape.value[a], tape.value[b]), powv_db(tape.value[a], tape.value[i]))
    elif o == LOCAL:
        kids = tape.param[i].kids
        d = local_grads_of(kids)
        if tape.flags[i] & IN_CHUNK:        # (w0, x0, w1, x1, ...: see row_rule_marking)
            dw = chunk_x_grads(chunk_of(kids))
            gate = 1.0
            if tape.flags[i] & RELU_ROW:
                gate = relu_da(tape.value[i])
            elif tape.flags[i] & SCALED_ROW:
                gate = mul_da((<ChunkHeader*>chunk_of(kids)).scale)
            return tuple([(dw[k // 2] if k % 2 == 0 else d[k // 2]) * gate
                          for k in range(kids[0])])
        return tuple([d[k] for k in range(kids[0])])
    elif o == CUSTOM:                   # (no built-in rule: it adds nothing)
        kids = tape.param[i].kids
        return (0.0,) * (kids[0] if kids != NULL else 0)
    unknown_op(i)
