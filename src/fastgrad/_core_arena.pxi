# The tape arena: its memory, slots, references and freeing. (Part of _core.pyx.)

# The arena. One per process; every access holds the GIL, so threads share it safely.
cdef Tape tape
memset(&tape, 0, sizeof(Tape))
tape.epoch = 1              # (a replay's stamp 0 is never current)

# Sparse per-node Python attributes, keyed by slot; flags[i] says whether an entry exists.
cdef dict _labels = {}      # HAS_LABEL: the node's label
cdef dict _opstrs = {}      # HAS_OPSTR: the `_op` string of a node
cdef dict _orders = {}      # HAS_ORDER: the node's reachable slots, parents first (bytes;
                            # but for leaves with no _backward: see forget_orders)
cdef dict _replays = {}     # HAS_REPLAY: the _Replay recompute() built for the node

# allocations left before a simulated failure (-1: never); set by _test_fail_allocs
cdef Py_ssize_t _allocs_until_failure = -1


# ---------------------------------------------------------------------- debug checks

cdef inline void invariant(bint ok, const char* what) noexcept nogil:
    """The debug build's consistency checks: a broken invariant is a bug in fastgrad, so
    it stops the process with a message. In a release build (DEBUG is a C constant 0)
    this compiles to nothing."""
    if DEBUG and not ok:
        fprintf(stderr, b"fastgrad: broken invariant: %s\n", what)
        abort()


cdef inline void check_node(node_t i) noexcept nogil:
    invariant(0 <= i < tape.size, b"a node's slot is below the tape's size")
    invariant(tape.op[i] < COUNT, b"a node's op code is below Op.COUNT")
    invariant(tape.refs[i] >= 0, b"a node's reference count is not negative")


# --------------------------------------------------------------------------- memory

cdef inline int count_allocation() except -1:
    # every allocation of the engine's own calls this first (see _test_fail_allocs)
    global _allocs_until_failure
    if _allocs_until_failure == 0:
        raise MemoryError("fastgrad: simulated allocation failure")
    if _allocs_until_failure > 0:
        _allocs_until_failure -= 1
    return 0


cdef int safe_realloc(void** p, size_t nelems, size_t elsize) except -1:
    """Resizes *p to nelems elements. On failure raises MemoryError and leaves *p as it was."""
    cdef void* q
    count_allocation()
    if nelems > (<size_t>-1) // elsize // 2:
        raise MemoryError(f"fastgrad: cannot allocate {nelems} elements")
    q = PyMem_Realloc(p[0], nelems * elsize)
    if q == NULL:
        raise MemoryError(f"fastgrad: cannot allocate {nelems * elsize} bytes")
    p[0] = q
    return 0


cdef int realloc_with_front(void** p, size_t nelems, size_t elsize) except -1:
    """safe_realloc for an array with one element in front of it: *p points past that
    element, so that index -1 is the array's own scratch element."""
    cdef char* block = NULL if p[0] == NULL else <char*>p[0] - elsize
    safe_realloc(<void**>&block, nelems + 1, elsize)
    p[0] = block + elsize
    return 0


cdef char* map_scratch(size_t capacity, size_t elsize) except NULL:
    """A scratch array of capacity elements, all 0, with one more element in front (the
    pointer returned points past it, so that index -1 is the array's own scratch
    element). Its pages are fresh anonymous memory, which takes no room until written:
    only the slots a pass reaches ever cost memory."""
    cdef void* block
    count_allocation()
    if capacity > (<size_t>-1) // elsize // 2:
        raise MemoryError(f"fastgrad: cannot allocate {capacity} elements")
    block = mmap(NULL, (capacity + 1) * elsize, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if block == MAP_FAILED:
        raise MemoryError(f"fastgrad: cannot allocate {(capacity + 1) * elsize} bytes")
    return <char*>block + elsize


cdef void unmap_scratch(void* p, size_t capacity, size_t elsize) noexcept:
    # gives back a scratch array from map_scratch (NULL: none)
    if p != NULL:
        munmap(<char*>p - elsize, (capacity + 1) * elsize)


cdef bint scratch_clear() noexcept:
    # the passes' scratch as it is outside a pass (see the Tape invariants)
    cdef node_t j
    if tape.capacity and (tape.parents_left[NO_NODE] != NO_PARENTS or tape.reached[NO_NODE] != 1):
        return False
    for j in range(tape.size):
        if tape.parents_left[j] != 0 or tape.reached[j]:
            return False
        if tape.replay_level != NULL and tape.replay_level[j] != 0:
            return False
    return True


cdef int grow(node_t needed) except -1:
    """Grows every tape array to hold at least `needed` slots (doubling)."""
    cdef size_t cap = tape.capacity if tape.capacity > 0 else 1024
    cdef size_t old = tape.capacity, words, old_words
    cdef char* left = NULL
    cdef char* reached = NULL
    cdef char* levels = NULL
    cdef int k
    while cap < <size_t>needed:
        cap *= 2
    if cap > INT32_MAX:
        cap = INT32_MAX
    if cap < <size_t>needed:
        raise MemoryError("fastgrad: the tape is full (2**31 - 1 nodes)")
    # Each array is resized in turn; if one fails the earlier ones are merely larger than
    # `capacity` says, which is harmless.
    safe_realloc(<void**>&tape.value, cap, sizeof(real_t))
    realloc_with_front(<void**>&tape.grad, cap, sizeof(real_t))
    tape.grad[NO_NODE] = 0.0
    safe_realloc(<void**>&tape.param, cap, sizeof(param_t))
    safe_realloc(<void**>&tape.lhs, cap, sizeof(node_t))
    safe_realloc(<void**>&tape.rhs, cap, sizeof(node_t))
    safe_realloc(<void**>&tape.refs, cap, sizeof(int32_t))
    safe_realloc(<void**>&tape.op, cap, sizeof(uint8_t))
    safe_realloc(<void**>&tape.flags, cap, sizeof(uint16_t))
    safe_realloc(<void**>&tape.handle, cap, sizeof(PyObject*))
    # the free-slot tree: each level as long as its slots need (new slots are not free:
    # they are above size, so the words added are 0 on every level)
    words, old_words = cap, old
    for k in range(FREE_LEVELS):
        words = max(bit_words(words), 1)
        old_words = bit_words(old_words)
        safe_realloc(<void**>&tape.free_map[k], words, sizeof(uint64_t))
        memset(&tape.free_map[k][old_words], 0, (words - old_words) * sizeof(uint64_t))
        tape.free_map_words[k] = words
    tape.free_levels = 1                # (the levels above the first one-word one repeat its bit)
    while tape.free_map_words[tape.free_levels - 1] > 1:
        tape.free_levels += 1
    # The passes' scratch last, all of it or none, so that each array is as long as
    # `capacity` says. It is made anew rather than copied: the tape grows outside every
    # pass, when the scratch of every slot is 0.
    if DEBUG:                           # (an O(size) check)
        invariant(scratch_clear(), b"the tape grows outside every pass")
    try:
        left = map_scratch(cap, sizeof(int32_t))
        reached = map_scratch(cap, sizeof(uint8_t))
        if tape.replay_level != NULL:   # (made by the first replay: grow_replay_levels)
            levels = map_scratch(cap, sizeof(uint8_t))
    except BaseException:
        unmap_scratch(left, cap, sizeof(int32_t))
        unmap_scratch(reached, cap, sizeof(uint8_t))
        raise
    unmap_scratch(tape.parents_left, old, sizeof(int32_t))
    unmap_scratch(tape.reached, old, sizeof(uint8_t))
    unmap_scratch(tape.replay_level, old, sizeof(uint8_t))
    tape.parents_left, tape.reached = <int32_t*>left, <uint8_t*>reached
    tape.parents_left[NO_NODE] = NO_PARENTS
    tape.reached[NO_NODE] = 1
    if levels != NULL:
        tape.replay_level = <uint8_t*>levels
    tape.capacity = <node_t>cap
    return 0


cdef inline size_t bit_words(size_t bits) noexcept nogil:
    # 64-bit words holding that many bits
    return (bits + 63) // 64


cdef int grow_replay_levels() except -1:
    """Makes replay_level, which only replays use (so a process that never replays does
    not pay its byte per slot); from then on grow() keeps it as long as the others."""
    if tape.replay_level == NULL and tape.capacity > 0:
        tape.replay_level = <uint8_t*>map_scratch(tape.capacity, sizeof(uint8_t))
    return 0


cdef inline int reserve(node_t n) except -1:
    """Room for n more slots: after reserve(n), n pushes cannot fail. The room is the free
    slots (size - live of them) and the new ones at size: push takes a new one while any
    is left, a free one in a full arena (see push_above)."""
    cdef node_t fresh = n - (tape.size - tape.live)
    if fresh > 0 and tape.size > tape.capacity - fresh:
        grow(tape.size + fresh)
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


cdef int list_try_push(NodeList* l, node_t i) except -1:
    """list_push that answers 0 instead of raising when memory runs out, else 1."""
    try:
        list_push(l, i)
    except MemoryError:
        return 0
    return 1


# ---------------------------------------------------------------------------- slots

cdef inline bint has_child_list(uint8_t op) noexcept nogil:
    # the ops whose children are a list in param[i].kids rather than lhs/rhs
    return op == CUSTOM or op == AFFINE or op == LOCAL


cdef inline Py_ssize_t local_grads_offset(node_t n) noexcept nogil:
    # where a LOCAL block's derivatives start, in node_t units: after the count and the n
    # slots, rounded up to an even number so that they are 8-byte aligned
    return (n + 2) & ~(<Py_ssize_t>1)


cdef inline real_t* local_grads_of(node_t* kids) noexcept nogil:
    return <real_t*>(kids + local_grads_offset(kids[0]))


cdef inline size_t local_block_bytes(node_t n) noexcept nogil:
    return local_grads_offset(n) * sizeof(node_t) + n * sizeof(real_t)


cdef node_t* new_local_block(node_t n) except NULL:
    """A LOCAL node's block for n >= 1 children, count set, slots and derivatives not."""
    cdef node_t* kids = NULL
    safe_realloc(<void**>&kids, local_block_bytes(n), 1)
    kids[0] = n
    return kids


# A chunk: the blocks of the rows of one linear call in one allocation, one malloc and
# one free per call instead of per row. After a header come x's derivatives, d (w x) /
# d w = x, once for all the rows, then the rows' blocks, all of one even number n of
# children (w0, x0, w1, x1, ...): a block is a LOCAL block (count, slots, padding) whose
# derivatives are only the n / 2 by x, the weights' values (row_block_bytes). A node
# whose block lies in a chunk has IN_CHUNK set, and the block's padding word (an even n
# leaves one after the children, local_grads_offset) holds how far into the chunk the
# block starts, in 8-byte words (so chunk_of is a load and a subtraction). The
# chunk holds one reference to each x for all its rows (x is every row's), dropped with
# its last row, when it is freed. Each row holds a reference to its weights, but for
# rows made from a Matrix: the chunk then holds one reference to the Matrix, whose
# handles hold the weights (its rows count no edge to them), and a row with a bias
# (ROW_BIAS) holds that one. So one row kept alive keeps its call's blocks, x and
# weights.
# A descending pass marks x reached when it sweeps the first of a chunk's rows (x lies
# below them all), and stamps the chunk with the pass, so that the other rows only add
# to x's grads.
cdef struct ChunkHeader:
    Py_ssize_t in_use       # how many of its blocks are still in use
    PyObject* matrix        # the Matrix its rows were made from (a reference), or NULL
    uint64_t marked         # the last descending pass that marked its x (tape.passes)
    real_t scale            # what its SCALED_ROW rows are multiplied by (1 otherwise)

cdef enum:
    CHUNK_HEADER = 32       # sizeof(ChunkHeader), a multiple of 8 (the derivatives stay
                            # aligned)


cdef inline size_t row_block_bytes(node_t n) noexcept nogil:
    # (a multiple of 8: local_grads_offset is even)
    return local_grads_offset(n) * sizeof(node_t) + (n // 2) * sizeof(real_t)


cdef inline real_t* chunk_x_grads(char* chunk) noexcept nogil:
    # d (w x) / d w for each x, the same in every row
    return <real_t*>(chunk + CHUNK_HEADER)


cdef inline node_t* chunk_block(char* chunk, Py_ssize_t r, node_t n) noexcept nogil:
    return <node_t*>(chunk + CHUNK_HEADER + (n // 2) * sizeof(real_t) +
                     <size_t>r * row_block_bytes(n))


cdef char* new_chunk(Py_ssize_t blocks, node_t n) except NULL:
    """A chunk of blocks >= 1 row blocks of n children (n even), counts and offsets set,
    slots and derivatives not, and no Matrix."""
    cdef size_t words = row_block_bytes(n) // 8, head = CHUNK_HEADER // 8 + n // 2
    cdef char* chunk = NULL
    cdef Py_ssize_t r
    cdef node_t* block
    # (the last block's offset in words must fit its padding word: 16 GB a call)
    if <size_t>blocks > (<size_t>INT32_MAX - head) // words:
        raise MemoryError(f"fastgrad: cannot allocate {blocks} blocks of {n} children")
    safe_realloc(<void**>&chunk, head + blocks * words, 8)
    (<ChunkHeader*>chunk).in_use = blocks
    (<ChunkHeader*>chunk).matrix = NULL
    (<ChunkHeader*>chunk).marked = 0
    (<ChunkHeader*>chunk).scale = 1.0
    for r in range(blocks):
        block = chunk_block(chunk, r, n)
        block[0] = n
        block[n + 1] = <node_t>((<char*>block - chunk) // 8)
    return chunk


cdef inline char* chunk_of(node_t* kids) noexcept nogil:
    # the chunk a block lies in (its node has IN_CHUNK)
    return <char*>kids - <size_t>kids[kids[0] + 1] * 8


cdef inline void pin(node_t c) noexcept:
    # A node with a Python _backward keeps its handle (which holds the function) alive
    # while a parent names it. The handle is GC-tracked, so once unpinned the cycle
    # handle -> function -> closure -> handle is collected like micrograd's.
    incref(tape.handle[c])
    tape.flags[c] |= PINNED


cdef inline void add_ref(node_t c) noexcept:
    tape.refs[c] += 1
    if (tape.flags[c] & (HAS_FN | PINNED)) == HAS_FN:
        pin(c)


cdef inline uint16_t descends_to(node_t i, node_t c) noexcept:
    # DESCENDS if the edge i -> c goes down (all do but in a full arena: see push_above)
    # and c's own graph descends
    return tape.flags[c] & DESCENDS if c < i else 0


cdef inline node_t push(uint8_t op, real_t value, node_t lhs, node_t rhs) noexcept:
    """A new node (after reserve: cannot fail) holding a reference to each child; param
    and the child list of CUSTOM, AFFINE and LOCAL nodes are set by their makers."""
    return push_above(op, value, lhs, rhs, lhs if lhs > rhs else rhs)


cdef inline node_t push_above(uint8_t op, real_t value, node_t lhs, node_t rhs,
                              node_t highest) noexcept:
    """push, for a node whose highest child is `highest` (-1 for none): it takes the lowest
    free slot above that child, or slot size. reserve() counts every free slot as room,
    so when the arena is full it takes the lowest free slot below the child instead (the
    graph over it then does not descend). (The makers of child-list nodes say which
    child is highest: see highest_child.)"""
    cdef node_t i = -1
    cdef uint16_t descends = DESCENDS
    if tape.live < tape.size:
        i = take_lowest_free() if highest < 0 else take_free_above(highest)
        if i < 0 and tape.size == tape.capacity:
            i = take_lowest_free()
    if i < 0:
        i = tape.size
        tape.size += 1                  # (its scratch is 0 already: see map_scratch)
    tape.value[i] = value
    tape.grad[i] = 0.0
    tape.lhs[i] = lhs
    tape.rhs[i] = rhs
    tape.refs[i] = 0
    tape.op[i] = op
    tape.handle[i] = NULL
    tape.live += 1
    if lhs >= 0:
        add_ref(lhs)
        descends &= descends_to(i, lhs)
    if rhs >= 0:
        add_ref(rhs)
        descends &= descends_to(i, rhs)
    tape.flags[i] = descends            # (no FREE any more)
    return i


cdef inline bint drop_ref(node_t c) noexcept:
    """Drops one reference to c; True if that was the last one (c must then be freed)."""
    tape.refs[c] -= 1
    invariant(tape.refs[c] >= 0, b"a reference count is not negative")
    if tape.refs[c] == 0:
        return True
    if tape.refs[c] == 1 and tape.flags[c] & PINNED:
        # Only the handle is left: the tape stops holding it. This may run Python code
        # (the handle's function can die), which may build or free other nodes, so
        # callers re-read the tape's arrays afterwards rather than caching them.
        tape.flags[c] &= ~PINNED
        decref(tape.handle[c])
    return False


cdef void forget_side_tables(node_t j) noexcept:
    # what release() drops of a dying node beside its slot: its entries in the side
    # tables, and its count as an overridden op
    if tape.flags[j] & HAS_LABEL:
        _labels.pop(j, None)
    if tape.flags[j] & HAS_OPSTR:
        _opstrs.pop(j, None)
    if tape.flags[j] & HAS_ORDER:
        tape.cached -= len(_orders.pop(j)) // sizeof(node_t)
    if tape.flags[j] & HAS_REPLAY:
        tape.replayed -= (<_Replay>_replays.pop(j)).size
    if tape.flags[j] & HAS_FN and tape.op[j] != CUSTOM:
        tape.overridden -= 1


cdef inline node_t drop_children(node_t* kids, node_t first, node_t last, node_t stride,
                                 node_t pending) noexcept:
    """Drops one reference to each of kids[first], kids[first + stride], ... up to
    kids[last], chaining the ones that die onto pending (see release); returns the new
    head of the chain."""
    cdef int32_t* refs = tape.refs
    cdef node_t k = first, c
    while k <= last:
        c = kids[k]
        if refs[c] > 2:
            refs[c] -= 1                # (c neither dies nor is left to its handle)
        else:
            if drop_ref(c):
                tape.refs[c] = pending
                pending = c
            refs = tape.refs            # (drop_ref may have run Python code)
        k += stride
    return pending


cdef void release(node_t i) noexcept:
    """Drops one reference to i and frees what dies with it, iteratively: dead nodes are
    chained through refs[] (unused once a node is dead), -1 ending the chain."""
    cdef node_t pending, j, c, n
    cdef node_t* kids
    cdef char* chunk
    cdef PyObject* matrix
    if not drop_ref(i):
        return
    tape.refs[i] = -1
    pending = i
    while pending != -1:
        j = pending
        pending = tape.refs[j]
        if has_child_list(tape.op[j]):
            kids = tape.param[j].kids
            tape.param[j].kids = NULL
            n = kids[0] if kids != NULL else 0
            if not tape.flags[j] & IN_CHUNK:
                pending = drop_children(kids, 1, n, 1, pending)
                PyMem_Free(kids)
            else:
                # a row of a linear call: it holds its weights (odd entries) unless the
                # chunk's Matrix does; x (even entries) is held by the chunk, and goes
                # with its last row, as does the chunk's reference to the Matrix
                chunk = chunk_of(kids)
                matrix = (<ChunkHeader*>chunk).matrix
                if matrix == NULL:
                    pending = drop_children(kids, 1, n, 2, pending)
                elif tape.flags[j] & ROW_BIAS:
                    pending = drop_children(kids, n - 1, n - 1, 1, pending)
                (<ChunkHeader*>chunk).in_use -= 1
                if (<ChunkHeader*>chunk).in_use == 0:
                    pending = drop_children(kids, 2, n, 2, pending)
                    PyMem_Free(chunk)
                    if matrix != NULL:
                        # (may run Python code and free other nodes: the tape is read
                        # afresh below; the pending chain is in dead slots, untouched)
                        decref(matrix)
        else:
            c = tape.lhs[j]
            if c >= 0 and drop_ref(c):
                tape.refs[c] = pending
                pending = c
            c = tape.rhs[j]
            if c >= 0 and drop_ref(c):
                tape.refs[c] = pending
                pending = c
        if tape.flags[j] & (HAS_LABEL | HAS_OPSTR | HAS_ORDER | HAS_REPLAY | HAS_FN):
            forget_side_tables(j)
        tape.refs[j] = 0
        tape.flags[j] = FREE
        tape.op[j] = LEAF
        tape.lhs[j] = tape.rhs[j] = -1
        mark_free(j)
        tape.live -= 1


# Free slots. A new node takes the lowest free slot above its highest child (a leaf the
# lowest free slot), so a graph built after others died lands in the lowest slots, in the
# order it is made: consecutive nodes sit side by side (cache lines, prefetching), and
# its edges go down, which keeps the one-pass backward (DESCENDS) even when slots freed
# mid-graph lie below a node's children (microgpt's script drops each position's unused
# probabilities just before it takes the log of the target's). Only in a full arena,
# with every free slot below the children, does a node take one below them.
# The free slots are a tree of bitmaps (free_map), 64 ways at each level: the lowest free
# slot at or above any slot is found by going up from that slot's word until a word has
# a bit at or above the position, then down through the lowest bits, at most
# FREE_LEVELS words each way, wherever the free slots are; the usual case (a free slot in
# the same word) reads one word, and free_top (no slot above it is free: a free raises
# it, a search that finds nothing lowers it) answers the other usual one, a node over
# the newest nodes with no free slot above them. Freeing or taking a slot changes a
# level only where the one below it turns empty or non-empty.

cdef inline void mark_free(node_t i) noexcept nogil:
    cdef Py_ssize_t q = i, w
    cdef uint64_t before
    cdef int k
    if i > tape.free_top:
        tape.free_top = i
    for k in range(FREE_LEVELS):
        w = q >> 6
        before = tape.free_map[k][w]
        tape.free_map[k][w] = before | ((<uint64_t>1) << (q & 63))
        if before != 0:
            break                       # (the levels above already show this word)
        q = w


cdef inline void unmark_free(node_t i) noexcept nogil:
    # takes free slot i off the tree
    cdef Py_ssize_t q = i, w
    cdef int k
    for k in range(FREE_LEVELS):
        w = q >> 6
        tape.free_map[k][w] &= ~((<uint64_t>1) << (q & 63))
        if tape.free_map[k][w] != 0:
            break
        q = w


cdef inline node_t free_slot_from(Py_ssize_t p) noexcept nogil:
    """The lowest free slot at or above slot p (>= 0), or -1 if there is none. The first
    two levels (a free slot within 4096 of p) are looked at here, the rest by
    free_slot_climb."""
    cdef uint64_t bits
    cdef Py_ssize_t q
    if p > tape.free_top:
        return -1
    invariant(tape.free_top < tape.size, b"free_top is below size")   # (so p's word exists)
    bits = tape.free_map[0][p >> 6] & ((~(<uint64_t>0)) << (p & 63))
    if bits != 0:
        return <node_t>((p & ~(<Py_ssize_t>63)) + lowest_bit(bits))
    q = (p >> 6) + 1                    # (level 1 exists: level 0 is 16 words or more)
    if (q >> 6) < tape.free_map_words[1]:
        bits = tape.free_map[1][q >> 6] & ((~(<uint64_t>0)) << (q & 63))
        if bits != 0:
            q = (q & ~(<Py_ssize_t>63)) + lowest_bit(bits)
            return <node_t>((q << 6) + lowest_bit(tape.free_map[0][q]))
    return free_slot_climb(2, (q >> 6) + 1)


cdef node_t free_slot_climb(int k, Py_ssize_t q) noexcept nogil:
    # the lowest free slot under bit q of level k or a later bit: up the levels until a
    # word has a bit at or after the position, then down through the lowest bits
    cdef uint64_t bits = 0
    while True:
        if k == tape.free_levels or (q >> 6) >= tape.free_map_words[k]:
            return -1                   # (the top level is one word: nothing is after it)
        bits = tape.free_map[k][q >> 6] & ((~(<uint64_t>0)) << (q & 63))
        if bits != 0:
            break
        k += 1
        q = (q >> 6) + 1                # the next word of the level below: its bit here
    q = (q & ~(<Py_ssize_t>63)) + lowest_bit(bits)
    while k > 0:
        k -= 1
        q = (q << 6) + lowest_bit(tape.free_map[k][q])
    return <node_t>q


cdef inline node_t take_lowest_free() noexcept nogil:
    """The lowest free slot, taken off the tree (some slot below size is free)."""
    cdef node_t i = free_slot_from(0)
    unmark_free(i)
    invariant(i >= 0 and tape.flags[i] & FREE and i < tape.size, b"the lowest free slot is free")
    return i


cdef inline node_t take_free_above(node_t b) noexcept nogil:
    """The lowest free slot above slot b (>= 0), taken off the tree, or -1 if none is."""
    cdef node_t i = free_slot_from(b + 1)
    if i < 0:
        if b < tape.free_top:
            tape.free_top = b           # (nothing above b is free)
        return -1
    unmark_free(i)
    invariant(tape.flags[i] & FREE and b < i < tape.size, b"a free slot above the child is free")
    return i


cdef inline node_t highest_child(node_t* kids) noexcept nogil:
    """The highest slot in a child list (-1 for none)."""
    cdef node_t top = -1, k
    if kids != NULL:
        for k in range(1, kids[0] + 1):
            if kids[k] > top:
                top = kids[k]
    return top
