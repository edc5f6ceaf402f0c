# The fused helpers of fastgrad.functional: whole layers built in one call. (Part of _core.pyx.)
#
# Each helper makes LOCAL nodes: their local derivatives are computed here, from the
# values at hand, as microgpt's ops compute theirs, and the sweep applies them with no op
# to dispatch on. The values are those of the list expressions the helpers stand for,
# operation for operation (each block names its expression), so they agree to the bit.
# Everything that can fail (argument checks, the ops' own errors, every allocation: the
# derivative blocks, the handles, the tape's room) happens before the first node is
# pushed, so a failed call leaves the arena as it was. Python code can run inside a
# helper: a number's __float__ (linear's x, rmsnorm's eps) and, before CPython 3.12, a
# collection while the handles are made (from 3.12 the collector runs only between
# bytecodes). It may change the caller's lists and drop Values: so each helper reads its
# Values from its own copy of the list, which holds them, and linear, which does not copy
# the rows, reads its weights after x's numbers and the handles, and runs no Python code
# from there until its nodes are pushed. The reference reads in the same order.

cdef struct Blocks:
    # the LOCAL blocks a helper allocated and has not yet given to nodes
    node_t** items
    Py_ssize_t size


cdef int blocks_init(Blocks* b, Py_ssize_t count) except -1:
    b.items = NULL
    b.size = 0
    safe_realloc(<void**>&b.items, count if count > 0 else 1, sizeof(node_t*))
    return 0


cdef node_t* blocks_new(Blocks* b, node_t children) except NULL:
    cdef node_t* block = new_local_block(children)
    b.items[b.size] = block
    b.size += 1
    return block


cdef void blocks_free(Blocks* b, bint given) noexcept:
    # given: the nodes own the blocks now, and only the list goes
    cdef Py_ssize_t k
    if not given:
        for k in range(b.size):
            PyMem_Free(b.items[k])
    PyMem_Free(b.items)
    b.items = NULL
    b.size = 0


cdef node_t push_local(node_t* block, real_t value) noexcept:
    """A LOCAL node of the given value owning block (its children and derivatives set):
    add_ref and descends_to for each child, with the arrays read once (pin, the rare
    case, runs no Python code and moves no array)."""
    cdef node_t i = push_above(LOCAL, value, -1, -1, highest_child(block))
    cdef node_t k, c
    cdef int32_t* refs = tape.refs
    cdef uint16_t* flags = tape.flags
    cdef uint16_t descends = DESCENDS
    tape.param[i].kids = block
    for k in range(1, block[0] + 1):
        c = block[k]
        refs[c] += 1
        if (flags[c] & (HAS_FN | PINNED)) == HAS_FN:
            pin(c)
        descends &= flags[c] if c < i else 0
    flags[i] &= descends | ~DESCENDS
    return i


cdef object handle_class(object v, str what):
    """The Value class of v, which all of a call's Values must share."""
    if isinstance(v, _Handle):
        return type(v)
    raise TypeError(f"{what} must be Values, not {type(v).__name__!r}")


cdef int check_handles(list vs, object kind, _Handle first, str what) except -1:
    for v in vs:
        if type(v) is not kind:
            if isinstance(v, _Handle):
                raise mixed_kinds(first, v)
            raise TypeError(f"{what} must be Values, not {type(v).__name__!r}")
        check_slot(<_Handle>v)
    return 0


cdef list new_handles(object kind, Py_ssize_t n):
    # n new handles of kind, in a list made at its length (a comprehension appends, and
    # grows the list as it goes); if making one fails, the list dies with NULL items left,
    # which a list's deallocator skips
    cdef list out = new_list(n)
    cdef Py_ssize_t k
    cdef bint plain = kind is Value
    for k in range(n):
        h = new_handle() if plain else new_gpt_handle()
        incref(<PyObject*>h)
        list_set_item(out, k, <PyObject*>h)
    return out


cdef int read_values(list vs, real_t* out) except -1:
    cdef Py_ssize_t k
    for k in range(len(vs)):
        out[k] = tape.value[(<_Handle>vs[k]).slot]
    return 0


cdef real_t max_of(real_t* x, Py_ssize_t n) noexcept nogil:
    # max(v.data for v in values), Python's rule: a later value replaces only a smaller one
    cdef real_t m = x[0]
    cdef Py_ssize_t k
    for k in range(1, n):
        if x[k] > m:
            m = x[k]
    return m


cdef struct Kin:
    # what making a node needs to know of a set of its children: the highest slot (-1 for
    # none), their flags ANDed (DESCENDS: every child's graph descends) and ORed
    # (HAS_FN: one of them may need a pin)
    node_t top
    uint16_t every
    uint16_t some


cdef Py_ssize_t sum_row(PyObject** row, Py_ssize_t n, void* kind, const real_t* xval,
                        real_t* total) noexcept:
    """sum(w * x for w, x in zip(row, x)) into total[0], for a row of n weights that must
    be live Values of kind; returns n, or the index of the first weight that is not (the
    caller raises)."""
    cdef real_t* value = tape.value
    cdef real_t acc = 0.0              # sum() starts at 0: 0 + w0*x0 is w0*x0 + 0.0
    cdef Py_ssize_t k
    cdef node_t s
    for k in range(n):
        if type_of(row[k]) != kind:
            return k
        s = (<_Handle>row[k]).slot
        if s < 0:
            return k
        acc = acc + value[s] * xval[k]
    total[0] = acc
    return n


cdef Py_ssize_t fill_row(PyObject** row, Py_ssize_t n, void* kind, const real_t* xval,
                         const node_t* xslot, node_t* block, real_t* total) noexcept:
    """sum_row, and the row's block (see new_chunk): children w0, x0, w1, x1, ...; local
    derivatives by x, w0, w1, ..."""
    cdef real_t* value = tape.value
    cdef real_t* d = local_grads_of(block)
    cdef real_t acc = 0.0, wv
    cdef Py_ssize_t k
    cdef node_t s
    for k in range(n):
        if type_of(row[k]) != kind:
            return k
        s = (<_Handle>row[k]).slot
        if s < 0:
            return k
        wv = value[s]
        acc = acc + wv * xval[k]
        block[1 + 2 * k] = s
        block[2 + 2 * k] = xslot[k]
        d[k] = mul_db(wv)               # d (w * x) / d x
    total[0] = acc
    return n


cdef Kin hold_weights(node_t* block, Py_ssize_t n) noexcept:
    """Adds a reference to each weight of a row's block (its odd entries) and returns
    their Kin."""
    cdef int32_t* refs = tape.refs
    cdef uint16_t* flags = tape.flags
    cdef Py_ssize_t k
    cdef node_t c, top = -1
    cdef uint16_t f, every = DESCENDS, some = 0
    cdef Kin kin
    for k in range(n):
        c = block[1 + 2 * k]
        refs[c] += 1
        f = flags[c]
        every &= f
        some |= f
        top = c if c > top else top
    kin.top, kin.every, kin.some = top, every, some
    return kin


# The row loops are called through pointers, which gcc cannot inline: inlined into
# _linear, where many values are live across them, they kept their accumulators and
# pointers on the stack (each weight's flags were ANDed into memory, a store-to-load
# dependency from one weight to the next; perf put ~1/3 of _linear's time there).
cdef Py_ssize_t (*fill_row_out_of_line)(PyObject**, Py_ssize_t, void*, const real_t*,
                                        const node_t*, node_t*, real_t*) noexcept
cdef Kin (*hold_weights_out_of_line)(node_t*, Py_ssize_t) noexcept
fill_row_out_of_line = fill_row
hold_weights_out_of_line = hold_weights


cdef object ragged_row(Py_ssize_t r, Py_ssize_t weights, Py_ssize_t n):
    return ValueError(f"linear: row {r} of w has {weights} weights, but x has {n} values")


cdef object bias_count(Py_ssize_t biases, Py_ssize_t rows):
    # (linear's bias: one live Value of the weights' class per row)
    return ValueError(f"linear: bias has {biases} values, but w has {rows} rows")


cdef int bad_weight(object item, object kind, object first) except -1:
    # raises the error for a weight of linear that is not a live Value of kind
    check_handles([item], kind, <_Handle>first, "linear's weights")
    check_slot(<_Handle>item)
    raise AssertionError("bad_weight: the weight is fine")


cdef Py_ssize_t read_x(list xs, object kind, object first, real_t* xval,
                       node_t* xslot) except -1:
    """x's values and slots (-1 for a number: its leaf is made by hold_x); returns how
    many numbers there are."""
    cdef Py_ssize_t k, numbers = 0
    for k in range(len(xs)):
        v = xs[k]
        if type(v) is kind:
            xslot[k] = check_slot(<_Handle>v)
            xval[k] = tape.value[xslot[k]]
        elif as_real(v, &xval[k]):
            xslot[k] = -1
            numbers += 1
        elif isinstance(v, _Handle):
            raise mixed_kinds(<_Handle>first, v)
        else:
            raise TypeError(f"linear's x must be Values or numbers, not {type(v).__name__!r}")
    return numbers


cdef void set_x_grads(char* chunk, const real_t* xval, Py_ssize_t n) noexcept:
    # the chunk's derivatives by the weights, d (w * x) / d w = x, for all its rows
    cdef real_t* dw = chunk_x_grads(chunk)
    cdef Py_ssize_t k
    for k in range(n):
        dw[k] = mul_da(xval[k])


cdef Kin hold_x(const real_t* xval, node_t* xslot, Py_ssize_t n) noexcept:
    """Makes a leaf of each number in x (after reserve), adds the chunk's reference to
    each x for all its rows, pinning those that need it, and returns x's Kin."""
    cdef Kin kin
    cdef Py_ssize_t k
    cdef node_t c
    kin.top, kin.every, kin.some = -1, DESCENDS, 0
    for k in range(n):
        if xslot[k] < 0:
            xslot[k] = push(LEAF, xval[k], -1, -1)
        c = xslot[k]
        kin.every &= tape.flags[c]
        kin.top = c if c > kin.top else kin.top
        tape.refs[c] += 1
        if (tape.flags[c] & (HAS_FN | PINNED)) == HAS_FN:
            pin(c)
    return kin


@cython.final
cdef class Matrix:
    """Rows of Values packed for linear(): Matrix(rows), rows a non-empty list of
    equally long, non-empty rows of Values of one class. It holds those Values (so it
    goes on naming the same ones whatever happens to the lists it was made from) and
    their slots, with what linear() would otherwise read of every weight at every call:
    the highest slot, whether every weight's graph descends, whether all are leaves.

    A linear() over it checks no weight and counts no reference to one: the rows' chunk
    holds the Matrix instead, and the Matrix the weights' handles. It is a sequence of
    its rows (tuples), so linear(x, m) on the reference engine, or any code written for
    lists of rows, reads it as rows."""
    cdef readonly tuple rows    # the rows, tuples of Values
    cdef object kind            # their class
    cdef node_t* slot           # their slots, row by row
    cdef Py_ssize_t m, n        # rows, columns
    cdef node_t top             # the highest slot
    cdef uint16_t every         # the weights' flags ANDed (DESCENDS: every graph descends)
    cdef bint leaves            # every weight is a leaf

    def __cinit__(self, rows):
        cdef Py_ssize_t r, k
        cdef node_t s
        self.rows = tuple([tuple(row) for row in rows])
        self.m = len(self.rows)
        if self.m == 0:
            raise ValueError("a Matrix needs at least one row")
        self.n = len(<tuple>self.rows[0])
        if self.n == 0:
            raise ValueError("a Matrix's rows need at least one Value")
        for r in range(self.m):
            if len(<tuple>self.rows[r]) != self.n:
                raise ValueError(f"Matrix: row {r} has {len(<tuple>self.rows[r])} Values, "
                                 f"but row 0 has {self.n}")
        if self.n > (INT32_MAX - 2) // 2:
            raise MemoryError("fastgrad: too many terms for one node")
        first = (<tuple>self.rows[0])[0]
        self.kind = handle_class(first, "a Matrix's entries")
        for row in self.rows:
            check_handles(list(<tuple>row), self.kind, <_Handle>first, "a Matrix's entries")
        safe_realloc(<void**>&self.slot, self.m * self.n, sizeof(node_t))
        self.top, self.every, self.leaves = -1, DESCENDS, True
        for r in range(self.m):
            for k in range(self.n):
                s = (<_Handle>(<tuple>self.rows[r])[k]).slot
                self.slot[r * self.n + k] = s
                self.top = s if s > self.top else self.top
                self.every &= tape.flags[s]
                self.leaves &= tape.op[s] == LEAF

    def __dealloc__(self):
        PyMem_Free(self.slot)

    @property
    def shape(self):
        """(rows, columns)"""
        return (self.m, self.n)

    def __len__(self):
        return self.m

    def __getitem__(self, r):
        return self.rows[r]

    def __iter__(self):
        return iter(self.rows)

    def __repr__(self):
        return f"Matrix({self.m} x {self.n} of {self.kind.__name__})"

    def __reduce__(self):
        return (Matrix, (self.rows,))


cdef real_t fill_matrix_row(const node_t* wslot, Py_ssize_t n, const real_t* xval,
                            const node_t* xslot, node_t* block) noexcept:
    """fill_row for a row of a Matrix (live weights of the right class, their slots at
    hand): returns the row's sum."""
    cdef real_t* value = tape.value
    cdef real_t* d = local_grads_of(block)
    cdef real_t acc = 0.0, wv
    cdef Py_ssize_t k
    cdef node_t s
    for k in range(n):
        s = wslot[k]
        wv = value[s]
        acc = acc + wv * xval[k]
        block[1 + 2 * k] = s
        block[2 + 2 * k] = xslot[k]
        d[k] = mul_db(wv)
    return acc


cdef real_t matrix_row_sum(const node_t* wslot, Py_ssize_t n, const real_t* xval) noexcept:
    cdef real_t acc = 0.0
    cdef Py_ssize_t k
    for k in range(n):
        acc = acc + tape.value[wslot[k]] * xval[k]
    return acc


cdef real_t (*fill_matrix_row_out_of_line)(const node_t*, Py_ssize_t, const real_t*,
                                           const node_t*, node_t*) noexcept
fill_matrix_row_out_of_line = fill_matrix_row


cdef list linear_of_matrix(list xs, Matrix w, bint relu, list bias):
    """_linear over a Matrix: the same nodes, values and grads, but its weights are known
    to be live Values of one class (the Matrix holds them), and the chunk holds the Matrix
    rather than each row its weights; so the rows are filled with no check, and their
    nodes pushed with no reference or flag of a weight to read. With bias (m Values of
    the Matrix's class), each row has one more term, its bias times a leaf of 1.0 that
    the rows share as x's last entry, and holds its bias itself (ROW_BIAS)."""
    cdef Py_ssize_t n = w.n, m = w.m, r, numbers
    cdef Py_ssize_t terms = n + (bias is not None)
    cdef bint grad = recording()
    cdef real_t* xval = NULL
    cdef node_t* xslot = NULL
    cdef char* chunk = NULL
    cdef node_t* block
    cdef node_t i, top, row_top, b
    cdef uint16_t every, row_every
    cdef uint16_t row_flags = (IN_CHUNK | (LEAF_WEIGHTS if w.leaves else 0) |
                               (RELU_ROW if relu else 0) | (ROW_BIAS if bias is not None else 0))
    cdef real_t total
    cdef Kin xkin
    cdef list out
    if len(xs) != n:
        raise ragged_row(0, n, len(xs))
    first = (<tuple>w.rows[0])[0]
    if bias is not None:
        if len(bias) != m:
            raise bias_count(len(bias), m)
        check_handles(bias, w.kind, <_Handle>first, "linear's bias")
        if terms > (INT32_MAX - 2) // 2:
            raise MemoryError("fastgrad: too many terms for one node")
    try:
        safe_realloc(<void**>&xval, terms, sizeof(real_t))
        safe_realloc(<void**>&xslot, terms, sizeof(node_t))
        numbers = read_x(xs, w.kind, first, xval, xslot)
        if bias is not None:
            xval[n], xslot[n] = 1.0, -1     # (a number: hold_x makes its leaf)
            numbers += 1
        out = new_handles(w.kind, m)
        reserve(<node_t>(m + numbers))
        if grad:
            chunk = new_chunk(m, <node_t>(2 * terms))
            set_x_grads(chunk, xval, terms)
    except BaseException:
        PyMem_Free(chunk)
        PyMem_Free(xval)
        PyMem_Free(xslot)
        raise
    # nothing fails from here on
    if not grad:
        for r in range(m):
            total = matrix_row_sum(&w.slot[r * n], n, xval)
            if bias is not None:                # (the last term, as the rows sum it)
                total = total + tape.value[(<_Handle>bias[r]).slot] * xval[n]
            attach(<_Handle>out[r], push(LEAF, relu_forward(total) if relu else total, -1, -1))
    else:
        xkin = hold_x(xval, xslot, terms)
        (<ChunkHeader*>chunk).matrix = <PyObject*>w
        incref(<PyObject*>w)
        top = w.top if w.top > xkin.top else xkin.top
        every = w.every & xkin.every & DESCENDS
        for r in range(m):
            block = chunk_block(chunk, r, <node_t>(2 * terms))
            total = fill_matrix_row_out_of_line(&w.slot[r * n], n, xval, xslot, block)
            row_top, row_every = top, every
            if bias is not None:
                b = (<_Handle>bias[r]).slot
                total = total + tape.value[b] * xval[n]
                block[1 + 2 * n] = b
                block[2 + 2 * n] = xslot[n]
                local_grads_of(block)[n] = mul_db(tape.value[b])
                add_ref(b)
                row_top = b if b > top else top
                row_every &= tape.flags[b]
            i = push_above(LOCAL, relu_forward(total) if relu else total, -1, -1, row_top)
            tape.param[i].kids = block
            if i < row_top or not row_every:    # (as in _linear)
                tape.flags[i] &= ~DESCENDS
            tape.flags[i] |= row_flags
            attach(<_Handle>out[r], i)
    PyMem_Free(xval)
    PyMem_Free(xslot)
    return out


cdef object linear_layer(object x, object w, object bias, object relu):
    """[sum(wi * xi for wi, xi in zip(row, x)) for row in w], one LOCAL node per row
    (children w0, x0, w1, x1, ...; local derivatives x0, w0, x1, w1, ..., the x's kept
    once in the chunk). A number in x becomes a leaf, shared by the rows. The rows'
    blocks are one chunk (new_chunk). With a bias (one Value per row), row r is
    sum + bias[r], in the same node: its last term is bias[r] times a leaf of 1.0, x's
    last entry for all the rows. With relu True, each row is the ReLU of that, in the
    same node (RELU_ROW).

    Every row has the same x, so x's share of the bookkeeping is done once per call:
    the rows' chunk holds one reference to each x for them all, and x's flags are read
    once; a row's weights are held and summarised (Kin) in one loop (hold_weights)
    before its node is pushed. w may be a Matrix: see linear_of_matrix."""
    if type(relu) is not bool:
        raise TypeError(f"linear's relu must be True or False, not {type(relu).__name__!r}")
    cdef bint fold = relu
    cdef list xs = list(x)             # (a copy: see the note at the top)
    cdef list bs = None if bias is None else list(bias)
    if type(w) is Matrix:
        return linear_of_matrix(xs, <Matrix>w, fold, bs)
    cdef list rows = [row_ if type(row_) is list else list(row_) for row_ in w]
    cdef Py_ssize_t n = len(xs), m = len(rows), r, k, numbers
    cdef bint grad = recording()
    cdef real_t* xval = NULL            # x's values, then each row's sum
    cdef node_t* xslot = NULL           # x's slots (-1 for a number until its leaf is made)
    cdef char* chunk = NULL             # the rows' blocks
    cdef node_t* block
    cdef node_t i
    cdef Kin xkin
    cdef list row, out
    for r in range(m):
        if len(<list>rows[r]) != n:
            raise ragged_row(r, len(<list>rows[r]), n)
    if bs is not None and len(bs) != m:
        raise bias_count(len(bs), m)
    if m == 0:
        return []
    if n == 0:
        raise ValueError("linear: x is empty (a row needs at least one weight)")
    if n + (bs is not None) > (INT32_MAX - 2) // 2:
        raise MemoryError("fastgrad: too many terms for one node")
    first = (<list>rows[0])[0]
    kind = handle_class(first, "linear's weights")
    if bs is not None:
        # each row's bias is one more weight, times a 1.0 in x (new lists: the rows'
        # are the caller's)
        check_handles(bs, kind, <_Handle>first, "linear's bias")
        xs.append(1.0)
        rows = [(<list>rows[r]) + [bs[r]] for r in range(m)]
        n += 1
    try:
        safe_realloc(<void**>&xval, n + m, sizeof(real_t))
        safe_realloc(<void**>&xslot, n, sizeof(node_t))
        numbers = read_x(xs, kind, first, xval, xslot)
        out = new_handles(kind, m)
        reserve(<node_t>(m + numbers))
        if grad:
            chunk = new_chunk(m, <node_t>(2 * n))
            set_x_grads(chunk, xval, n)
        # one pass per row: check each weight, sum the row, fill its node's block
        for r in range(m):
            row = <list>rows[r]
            if len(row) != n:               # (again: a finalizer may have changed it)
                raise ragged_row(r, len(row), n)
            if grad:
                block = chunk_block(chunk, r, <node_t>(2 * n))
                k = fill_row_out_of_line(list_items(row), n, <void*>kind, xval, xslot, block,
                                         &xval[n + r])
            else:
                k = sum_row(list_items(row), n, <void*>kind, xval, &xval[n + r])
            if k < n:
                bad_weight(row[k], kind, first)
    except BaseException:
        PyMem_Free(chunk)
        PyMem_Free(xval)
        PyMem_Free(xslot)
        raise
    # nothing fails from here on
    if fold:
        for r in range(m):
            xval[n + r] = relu_forward(xval[n + r])
    if not grad:
        for r in range(m):
            attach(<_Handle>out[r], push(LEAF, xval[n + r], -1, -1))
        PyMem_Free(xval)
        PyMem_Free(xslot)
        return out
    xkin = hold_x(xval, xslot, n)
    for r in range(m):
        block = chunk_block(chunk, r, <node_t>(2 * n))
        if numbers:
            for k in range(n):
                block[2 + 2 * k] = xslot[k]
        i = push_row(block, n, xval[n + r], &xkin)
        if fold:
            tape.flags[i] |= RELU_ROW
        attach(<_Handle>out[r], i)
    PyMem_Free(xval)
    PyMem_Free(xslot)
    return out


cdef inline node_t push_row(node_t* block, Py_ssize_t n, real_t value, Kin* xkin) noexcept:
    """The node of a row of n terms whose block is filled (weights and x's slots), after
    reserve and hold_x (xkin): it holds its weights, pinning those that need it."""
    cdef Kin kin = hold_weights_out_of_line(block, n)
    cdef node_t i = push_above(LOCAL, value, -1, -1,
                               kin.top if kin.top > xkin.top else xkin.top)
    cdef Py_ssize_t k
    cdef node_t c
    tape.param[i].kids = block
    if kin.some & HAS_FN:
        for k in range(n):
            c = block[1 + 2 * k]
            if (tape.flags[c] & (HAS_FN | PINNED)) == HAS_FN:
                pin(c)
    # the edges go down if the node is above all its children (push_above takes a slot
    # below one only in a full arena) and every child's graph descends
    if i < kin.top or i < xkin.top or not (kin.every & xkin.every & DESCENDS):
        tape.flags[i] &= ~DESCENDS
    tape.flags[i] |= IN_CHUNK
    return i


cdef object rmsnorm_layer(object x, object eps):
    """ms = sum(xi * xi for xi in x) / len(x); scale = (ms + eps) ** -0.5;
    [xi * scale for xi in x]: scale is one LOCAL node over x, each output a '*' node."""
    cdef list xs = list(x)             # (a copy: see the note at the top)
    cdef Py_ssize_t n = len(xs), k
    cdef bint grad = recording()
    cdef real_t e = real_or_raise(eps, "eps")
    cdef real_t total = 0.0, inv_n, u, scale, c, xk
    cdef real_t* d
    cdef node_t* block = NULL
    cdef node_t si
    cdef list out
    if n == 0:
        raise ValueError("rmsnorm of an empty list")
    if n > INT32_MAX - 2:
        raise MemoryError("fastgrad: too many terms for one node")
    first = xs[0]
    kind = handle_class(first, "rmsnorm's x")
    check_handles(xs, kind, <_Handle>first, "rmsnorm's x")
    for k in range(n):
        xk = tape.value[(<_Handle>xs[k]).slot]
        total = total + xk * xk                 # sum() from 0, as sum(xi * xi for xi in x)
    pow_forward(<real_t>n, -1.0, &inv_n)        # x / len(x) is x * len(x) ** -1
    u = total * inv_n + e                       # ms + eps
    pow_forward(u, -0.5, &scale)
    try:
        if grad:
            block = new_local_block(<node_t>n)
        out = new_handles(kind, n)
        reserve(<node_t>(n + 1))
    except BaseException:
        PyMem_Free(block)
        raise
    if not grad:
        for k in range(n):
            attach(<_Handle>out[k], push(LEAF, mul_forward(tape.value[(<_Handle>xs[k]).slot],
                                                           scale), -1, -1))
        return out
    # d scale / d xi = pow's derivative at u, times d ms / d xi = 2 * xi / len(x)
    c = pow_da(u, -0.5) * inv_n
    d = local_grads_of(block)
    for k in range(n):
        block[k + 1] = (<_Handle>xs[k]).slot
        d[k] = 2.0 * tape.value[block[k + 1]] * c
    si = push_local(block, scale)
    for k in range(n):
        attach(<_Handle>out[k], push(MUL, mul_forward(tape.value[block[k + 1]], scale),
                                     block[k + 1], si))
    return out


cdef int check_logits(list xs, str what) except -1:
    if len(xs) == 0:
        raise ValueError(f"{what} of an empty list of logits")
    if len(xs) > INT32_MAX - 2:
        raise MemoryError("fastgrad: too many terms for one node")
    first = xs[0]
    check_handles(xs, handle_class(first, "logits"), <_Handle>first, "logits")
    return 0


cdef real_t shifted_exps(real_t* xv, Py_ssize_t n, real_t* e) except? -1.0:
    """e[k] = exp(x[k] - max(x)) (x - m is x + (-m), as Value - number builds it); returns
    their sum, started at 0 as sum() starts."""
    cdef real_t m = max_of(xv, n), total = 0.0
    cdef Py_ssize_t k
    for k in range(n):
        exp_forward(add_forward(xv[k], -m), &e[k])
        total = total + e[k]
    return total


cdef object softmax_layer(object logits):
    """m = max(v.data for v in logits); exps = [(v - m).exp() for v in logits];
    total = sum(exps); [e / total for e in exps]: total is one LOCAL node over the logits
    (d total / d x_k = e_k), each output a LOCAL node over (x_k, total)."""
    cdef list xs = list(logits)        # (a copy: see the note at the top)
    cdef Py_ssize_t n = len(xs), k
    cdef bint grad = recording()
    cdef real_t* xv = NULL
    cdef node_t* slot = NULL            # the logits' slots, then the outputs'
    cdef real_t total, r
    cdef list out
    cdef Blocks blocks
    blocks.items = NULL
    blocks.size = 0
    check_logits(xs, "softmax")
    try:
        safe_realloc(<void**>&xv, 2 * n, sizeof(real_t))   # the logits, then their exps
        read_values(xs, xv)
        total = shifted_exps(xv, n, &xv[n])
        pow_forward(total, -1.0, &r)            # e / total is e * total ** -1
        if grad:
            safe_realloc(<void**>&slot, 2 * n, sizeof(node_t))
            blocks_init(&blocks, n + 1)
            softmax_blocks(&blocks, n)
        out = new_handles(type(xs[0]), n)
        reserve(<node_t>(n + 1))
    except BaseException:
        blocks_free(&blocks, False)
        PyMem_Free(slot)
        PyMem_Free(xv)
        raise
    if not grad:
        for k in range(n):
            attach(<_Handle>out[k], push(LEAF, mul_forward(xv[n + k], r), -1, -1))
        PyMem_Free(xv)
        return out
    for k in range(n):
        slot[k] = (<_Handle>xs[k]).slot
    push_softmax(blocks.items, slot, &xv[n], n, total, r, &slot[n])
    for k in range(n):
        attach(<_Handle>out[k], slot[n + k])
    blocks_free(&blocks, True)
    PyMem_Free(slot)
    PyMem_Free(xv)
    return out


cdef int softmax_blocks(Blocks* blocks, Py_ssize_t n) except -1:
    # the n + 1 blocks of a softmax of n logits, added to blocks (which has room for them)
    cdef Py_ssize_t k
    blocks_new(blocks, <node_t>n)
    for k in range(n):
        blocks_new(blocks, 2)
    return 0


cdef void push_softmax(node_t** blocks, const node_t* xslot, const real_t* e, Py_ssize_t n,
                       real_t total, real_t r, node_t* out) noexcept:
    """The nodes of a softmax over the logits in slots xslot, after reserve(n + 1): the
    total, then each probability, their slots written to out. e holds the shifted exps,
    total their sum and r total ** -1; blocks the n + 1 blocks of softmax_blocks."""
    cdef node_t* block = blocks[0]
    cdef real_t* d = local_grads_of(block)
    cdef real_t dr = pow_da(total, -1.0)
    cdef Py_ssize_t k
    cdef node_t ti
    for k in range(n):
        block[k + 1] = xslot[k]
        d[k] = exp_da(e[k])                     # through exp, and x - m's 1
    ti = push_local(block, total)
    for k in range(n):
        block = blocks[k + 1]
        d = local_grads_of(block)
        block[1] = xslot[k]
        block[2] = ti
        d[0] = mul_da(r) * exp_da(e[k])         # e_k * r, through e_k
        d[1] = mul_db(e[k]) * dr                # through total ** -1
        out[k] = push_local(block, mul_forward(e[k], r))


cdef object cross_entropy_layer(object logits, Py_ssize_t target):
    """-log softmax(logits)[target] as log(sum(exps)) - (x_target - m), one LOCAL node over
    the logits: d / d x_k = e_k / total, less 1 at the target. target is in range."""
    cdef list xs = list(logits)        # (a copy: see the note at the top)
    cdef Py_ssize_t n = len(xs), k
    cdef real_t* xv = NULL
    cdef real_t total, lse, inv, loss
    cdef node_t* block = NULL
    cdef real_t* d
    cdef _Handle h
    check_logits(xs, "cross_entropy")
    try:
        safe_realloc(<void**>&xv, 2 * n, sizeof(real_t))
        read_values(xs, xv)
        total = shifted_exps(xv, n, &xv[n])
        log_forward(total, &lse)
        # log(total) - (x_t - m): subtracting is adding the negation, exactly
        loss = lse - add_forward(xv[target], -max_of(xv, n))
        if recording():
            block = new_local_block(<node_t>n)
        h = new_handles(type(xs[0]), 1)[0]
        reserve(1)
    except BaseException:
        PyMem_Free(block)
        PyMem_Free(xv)
        raise
    if block == NULL:
        PyMem_Free(xv)
        return attach(h, push(LEAF, loss, -1, -1))
    inv = log_da(total)
    d = local_grads_of(block)
    for k in range(n):
        block[k + 1] = (<_Handle>xs[k]).slot
        d[k] = exp_da(xv[n + k]) * inv - (1.0 if k == target else 0.0)
    PyMem_Free(xv)
    return attach(h, push_local(block, loss))


cdef object attention_layer(object q, object keys, object values, object n_head):
    """microgpt's attention of one position over its cache, head by head: with
    hd = len(q) // n_head, c = (hd ** 0.5) ** -1 and lo = h * hd for head h,
        logits = linear(q[lo:lo + hd], [k[lo:lo + hd] for k in keys])
        weights = softmax(mul(logits, c))
        out += linear(weights, [[v[lo + j] for v in values] for j in range(hd)])
    The same nodes, in the same order, as those calls, but that the scaling is in the
    logits' rows (SCALED_ROW: mul's leaf of c and '*' node are not made); only the
    outputs get handles. Every value but the outputs' is computed, and everything
    allocated, before the first node; the outputs' rows are filled as they are pushed
    (their x, the weights, has slots only then)."""
    cdef list qs = list(q)              # (copies, which hold the Values: see the top)
    cdef list ks, vs
    cdef Py_ssize_t E = len(qs), T, H, hd, h, t, j, lo, nodes
    cdef bint grad = recording()
    cdef real_t c, root
    cdef real_t* val = NULL             # q's values; each head's logits, exps and weights
    cdef node_t* slot = NULL            # q's slots, keys' (by position), values' (by
                                        # dimension), then a head's scaled logits' and
                                        # weights'
    cdef char** chunks = NULL           # each head's two chunks: logits, outputs
    cdef real_t* qval
    cdef real_t* lg
    cdef real_t* e
    cdef real_t* p
    cdef real_t* sums                   # each head's exps' total and its ** -1
    cdef node_t* qslot
    cdef node_t* kslot
    cdef node_t* vslot
    cdef node_t* sslot
    cdef node_t* pslot
    cdef node_t* block
    cdef Kin xkin
    cdef Blocks blocks
    cdef list out
    blocks.items = NULL
    blocks.size = 0
    if n_head < 1:                      # (an int: functional.attention checks its type)
        raise ValueError(f"attention: n_head must be at least 1, not {n_head}")
    if E == 0:
        raise ValueError("attention: q is empty")
    if E % n_head:
        raise ValueError(f"attention: q's {E} values do not split into {n_head} heads")
    H = n_head
    hd = E // H
    ks = [list(k) for k in keys]
    vs = [list(v) for v in values]
    T = len(ks)
    if T == 0:
        raise ValueError("attention over no keys")
    if len(vs) != T:
        raise ValueError(f"attention: {T} keys but {len(vs)} values")
    for t in range(T):
        if len(<list>ks[t]) != E:
            raise ValueError(f"attention: key {t} has {len(<list>ks[t])} values, but q has {E}")
        if len(<list>vs[t]) != E:
            raise ValueError(f"attention: value {t} has {len(<list>vs[t])} values, but q has {E}")
    if T > (INT32_MAX - 2) // 2 or H * (2 * T + 1) + E > INT32_MAX // 2:
        raise MemoryError("fastgrad: too many terms for one attention")
    first = qs[0]
    kind = handle_class(first, "attention's q")
    check_handles(qs, kind, <_Handle>first, "attention's q")
    for t in range(T):
        check_handles(<list>ks[t], kind, <_Handle>first, "attention's keys")
        check_handles(<list>vs[t], kind, <_Handle>first, "attention's values")
    pow_forward(<real_t>hd, 0.5, &root)     # s / hd ** 0.5 is s * (hd ** 0.5) ** -1
    pow_forward(root, -1.0, &c)
    nodes = H * (2 * T + 1) + E if grad else E
    try:
        safe_realloc(<void**>&val, E + H * (3 * T + 2), sizeof(real_t))
        safe_realloc(<void**>&slot, E + 2 * T * E + 2 * T, sizeof(node_t))
        qval, lg = val, &val[E]
        qslot, kslot, vslot = slot, &slot[E], &slot[E + T * E]
        sslot, pslot = &slot[E + 2 * T * E], &slot[E + 2 * T * E + T]
        for j in range(E):
            qslot[j] = (<_Handle>qs[j]).slot
            qval[j] = tape.value[qslot[j]]
        for t in range(T):
            for j in range(E):
                kslot[t * E + j] = (<_Handle>(<list>ks[t])[j]).slot
                vslot[j * T + t] = (<_Handle>(<list>vs[t])[j]).slot
        if grad:
            safe_realloc(<void**>&chunks, 2 * H, sizeof(char*))
            memset(chunks, 0, 2 * H * sizeof(char*))
            blocks_init(&blocks, H * (T + 1))
            for h in range(H):
                chunks[2 * h] = new_chunk(T, <node_t>(2 * hd))
                (<ChunkHeader*>chunks[2 * h]).scale = c
                chunks[2 * h + 1] = new_chunk(hd, <node_t>(2 * T))
                softmax_blocks(&blocks, T)
        # each head's logits (its rows filled), exps and weights
        for h in range(H):
            lo = h * hd
            lg, e, p = &val[E + h * 3 * T], &val[E + h * 3 * T + T], &val[E + h * 3 * T + 2 * T]
            sums = &val[E + H * 3 * T + 2 * h]
            for t in range(T):
                if grad:
                    lg[t] = fill_matrix_row_out_of_line(&kslot[t * E + lo], hd, &qval[lo],
                                                        &qslot[lo],
                                                        chunk_block(chunks[2 * h], t, <node_t>(2 * hd)))
                else:
                    lg[t] = matrix_row_sum(&kslot[t * E + lo], hd, &qval[lo])
                lg[t] = mul_forward(lg[t], c)   # (scaled: the rows' values)
            sums[0] = shifted_exps(lg, T, e)
            pow_forward(sums[0], -1.0, &sums[1])
            for t in range(T):
                p[t] = mul_forward(e[t], sums[1])
        out = new_handles(kind, E)
        reserve(<node_t>nodes)
    except BaseException:
        if chunks != NULL:
            for h in range(2 * H):
                PyMem_Free(chunks[h])
        PyMem_Free(chunks)
        blocks_free(&blocks, False)
        PyMem_Free(slot)
        PyMem_Free(val)
        raise
    # nothing fails from here on
    for h in range(H):
        lo = h * hd
        lg, e, p = &val[E + h * 3 * T], &val[E + h * 3 * T + T], &val[E + h * 3 * T + 2 * T]
        sums = &val[E + H * 3 * T + 2 * h]
        if not grad:
            for j in range(hd):
                attach(<_Handle>out[lo + j],
                       push(LEAF, matrix_row_sum(&vslot[(lo + j) * T], T, p), -1, -1))
            continue
        # mul(linear(q[lo:lo + hd], keys' slices), c), the scaled logits
        set_x_grads(chunks[2 * h], &qval[lo], hd)
        xkin = hold_x(&qval[lo], &qslot[lo], hd)
        for t in range(T):
            sslot[t] = push_row(chunk_block(chunks[2 * h], t, <node_t>(2 * hd)), hd, lg[t],
                                &xkin)
            tape.flags[sslot[t]] |= SCALED_ROW
        push_softmax(&blocks.items[h * (T + 1)], sslot, e, T, sums[0], sums[1], pslot)
        # linear(weights, the head's dimensions of the values)
        set_x_grads(chunks[2 * h + 1], p, T)
        xkin = hold_x(p, pslot, T)
        for j in range(hd):
            block = chunk_block(chunks[2 * h + 1], j, <node_t>(2 * T))
            attach(<_Handle>out[lo + j],
                   push_row(block, T, fill_matrix_row_out_of_line(&vslot[(lo + j) * T], T, p,
                                                                  pslot, block), &xkin))
    blocks_free(&blocks, True)
    PyMem_Free(chunks)
    PyMem_Free(slot)
    PyMem_Free(val)
    return out


# ------------------------------------------------------------------ entry points

# The engine's API for fastgrad.functional's dispatch (each engine module has these).
def _linear(x, w, bias=None, relu=False):
    return linear_layer(x, w, bias, relu)


def _rmsnorm(x, eps):
    return rmsnorm_layer(x, eps)


def _softmax(logits):
    return softmax_layer(logits)


def _cross_entropy(logits, Py_ssize_t target):
    return cross_entropy_layer(logits, target)


def _attention(q, keys, values, n_head):
    return attention_layer(q, keys, values, n_head)


# ------------------------------------------------------------ element by element
#
# add, mul and relu over lists make the operators' own nodes (one '+', '*' or ReLU node
# per element, a number becoming a leaf), the same nodes in the same slots as the list
# expressions; what they save is the Python call per element.

cdef inline bint plain_number(object v) noexcept:
    # an exact float or int: converted to a real without running Python code (not through
    # as_real, which gcc then stopped inlining into binary, the operators' hot path)
    return float_check_exact(<PyObject*>v) or long_check_exact(<PyObject*>v)


cdef object elementwise(uint8_t op, list xs, object y):
    """[a + b for a, b in zip(xs, y)] for ADD, [a * b ...] for MUL: y is one plain number
    or a list or tuple as long as xs. xs must hold live Values of its first's class and y
    those or plain numbers; for anything else None, with nothing made (functional's
    Python function then takes the call and raises the error)."""
    cdef Py_ssize_t n = len(xs), k
    cdef real_t x, c = 0.0
    cdef node_t rhs
    cdef list ys = None
    cdef list out
    kind = type(xs[0])
    if type(y) is list or type(y) is tuple:
        ys = list(y)                    # (a copy: see the note at the top)
        if len(ys) != n:
            return None
    elif not plain_number(y):
        return None
    for k in range(n):
        a = xs[k]
        if type(a) is not kind or (<_Handle>a).slot < 0:
            return None
        if ys is not None:
            b = ys[k]
            if type(b) is kind:
                if (<_Handle>b).slot < 0:
                    return None
            elif plain_number(b):
                x = b                   # (an int too large for a float raises here)
            else:
                return None
    if ys is None:
        c = y
    if n > (INT32_MAX - 2) // 2:
        raise MemoryError("fastgrad: too many elements for one call")
    out = new_handles(kind, n)
    reserve(<node_t>(2 * n))
    # nothing fails from here on
    for k in range(n):
        x, rhs = c, -1
        if ys is not None:
            b = ys[k]
            if type(b) is kind:
                rhs = (<_Handle>b).slot
                x = tape.value[rhs]
            else:
                x = b                   # (a plain number: the conversion cannot fail now)
        attach(<_Handle>out[k], binary_node(op, (<_Handle>xs[k]).slot, x, rhs))
    return out


cdef object relu_each(list xs):
    """[a.relu() for a in xs], or None (nothing made) unless xs holds live Values of its
    first's class."""
    cdef Py_ssize_t n = len(xs), k
    cdef node_t i
    cdef list out
    kind = type(xs[0])
    for k in range(n):
        a = xs[k]
        if type(a) is not kind or (<_Handle>a).slot < 0:
            return None
    out = new_handles(kind, n)
    reserve(<node_t>n)
    for k in range(n):
        i = (<_Handle>xs[k]).slot
        attach(<_Handle>out[k], unary_node(RELU, relu_forward(tape.value[i]), i))
    return out


# fastgrad.functional's helpers themselves, on the compiled engine. functional's Python
# functions pick each call's engine from its first Value and check cross_entropy's
# target: ~940 instructions a call (callgrind), a quarter of a small linear's cost, paid
# 184 times in a microgpt step. These take this engine's Values (and a Matrix) straight
# to the layer, and anything else (the reference's Values, bad input) to functional's
# functions, which pick the engine or raise the error: the same results and errors, as
# the layers are the ones those functions call. functional installs them (_fast_helpers).
cdef object _generic_linear = None, _generic_rmsnorm = None
cdef object _generic_softmax = None, _generic_cross_entropy = None
cdef object _generic_add = None, _generic_mul = None, _generic_relu = None
cdef object _generic_attention = None


cdef inline bint is_value(object v) noexcept:
    return type(v) is Value or type(v) is GptValue


cdef inline bint starts_with_value(object seq) noexcept:
    # whether seq is a non-empty list or tuple whose first item is this engine's Value
    if type(seq) is list:
        return len(<list>seq) > 0 and is_value((<list>seq)[0])
    if type(seq) is tuple:
        return len(<tuple>seq) > 0 and is_value((<tuple>seq)[0])
    return False


def _fast_linear(x, w, bias=None, *, relu=False):
    if type(w) is Matrix or (type(w) is list and len(<list>w) > 0 and
                             starts_with_value((<list>w)[0])):
        return linear_layer(x, w, bias, relu)
    return _generic_linear(x, w, bias, relu=relu)


def _fast_rmsnorm(x, eps=1e-5):
    if starts_with_value(x):
        return rmsnorm_layer(x, eps)
    return _generic_rmsnorm(x, eps)


def _fast_softmax(logits):
    if starts_with_value(logits):
        return softmax_layer(logits)
    return _generic_softmax(logits)


def _fast_cross_entropy(logits, target):
    cdef Py_ssize_t n
    if type(target) is int and starts_with_value(logits):
        n = len(logits)
        if -n <= target < n:
            return cross_entropy_layer(logits, target % n)
    return _generic_cross_entropy(logits, target)


def _fast_add(x, y):
    cdef object out = None
    if starts_with_value(x):
        out = elementwise(ADD, list(x), y)
    return out if out is not None else _generic_add(x, y)


def _fast_mul(x, y):
    cdef object out = None
    if starts_with_value(x):
        out = elementwise(MUL, list(x), y)
    return out if out is not None else _generic_mul(x, y)


def _fast_relu(x):
    cdef object out = None
    if starts_with_value(x):
        out = relu_each(list(x))
    return out if out is not None else _generic_relu(x)


def _fast_attention(q, keys, values, n_head):
    if type(n_head) is int and starts_with_value(q):
        return attention_layer(q, keys, values, n_head)
    return _generic_attention(q, keys, values, n_head)


def _fast_helpers(linear, rmsnorm, softmax, cross_entropy, add, mul, relu, attention):
    """The compiled entry points of fastgrad.functional's linear, rmsnorm, softmax,
    cross_entropy, add, mul, relu and attention, which hand what they do not take to the
    functions given; they are given those functions' names, docstrings and annotations."""
    global _generic_linear, _generic_rmsnorm, _generic_softmax, _generic_cross_entropy
    global _generic_add, _generic_mul, _generic_relu, _generic_attention
    _generic_linear, _generic_rmsnorm = linear, rmsnorm
    _generic_softmax, _generic_cross_entropy = softmax, cross_entropy
    _generic_add, _generic_mul, _generic_relu = add, mul, relu
    _generic_attention = attention
    generic = (linear, rmsnorm, softmax, cross_entropy, add, mul, relu, attention)
    fast = (_fast_linear, _fast_rmsnorm, _fast_softmax, _fast_cross_entropy, _fast_add,
            _fast_mul, _fast_relu, _fast_attention)
    for entry, function in zip(fast, generic):
        for name in ("__name__", "__qualname__", "__module__", "__doc__", "__annotations__"):
            setattr(entry, name, getattr(function, name))
    return fast
