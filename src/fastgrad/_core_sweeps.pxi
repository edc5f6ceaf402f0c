# Ordering the nodes reachable from a root, and the backward sweeps. (Part of _core.pyx.)

# How far ahead the loops below prefetch. The graph is a DAG scattered over the arrays,
# so each node costs a few cache misses; the passes below walk queues whose next entries
# are known, so their misses can be started early and overlap.
cdef enum:
    AHEAD = 16
    # The descending pass prefetches only from a root above this slot. It reads slots
    # [0, root] at most; below it their arrays (~40 bytes a slot, 5 MB) stay in the 32 MB
    # cache the cores share, and a small graph paid ~10 instructions a slot for nothing
    # (softmax-ce: 4% of a sample; at 1 << 15, micrograd's demo graph of 65k nodes:
    # 6.0-8.0 against 5.0 ns a node, 2026-12-04). (Until 2026-12-07 the test was the
    # arena's size, which never shrinks: once any graph had been large, every later one
    # prefetched; in an arena grown past this, the demo graph's backward took 5.73M
    # instructions against 4.61M now, softmax-ce's a third more.)
    PREFETCH_SLOTS = 1 << 17


cdef inline void prefetch_node(node_t i) noexcept nogil:
    prefetch(&tape.op[i])
    prefetch(&tape.lhs[i])
    prefetch(&tape.rhs[i])


cdef inline void prefetch_children(node_t i, bint values) noexcept nogil:
    """Prefetches what a pass reads of i's children: their parent counts, and with
    values their grads and values too (sweeping). Children in a child list are not
    prefetched. A missing child (-1) costs a useless prefetch, never a fault."""
    cdef node_t a = tape.lhs[i], b = tape.rhs[i]
    if values:
        prefetch(&tape.grad[a])
        prefetch(&tape.value[a])
        prefetch(&tape.grad[b])
        prefetch(&tape.value[b])
    prefetch(&tape.parents_left[a])
    prefetch(&tape.parents_left[b])


cdef inline void prefetch_ahead(node_t* queue, Py_ssize_t h, Py_ssize_t size, bint values) noexcept nogil:
    if h + AHEAD < size:                # far ahead: the node's own fields
        prefetch_node(queue[h + AHEAD])
        if values:
            prefetch(&tape.grad[queue[h + AHEAD]])
            prefetch(&tape.value[queue[h + AHEAD]])
            prefetch(&tape.param[queue[h + AHEAD]])
    if h + AHEAD // 2 < size:           # nearer: its children, now that lhs/rhs are in
        prefetch_children(queue[h + AHEAD // 2], values)


cdef inline void check_counts_clear(NodeList* queue) noexcept nogil:
    # debug build: after a Kahn pass every count it touched is back to 0
    cdef Py_ssize_t k
    if DEBUG:
        invariant(tape.parents_left[NO_NODE] == NO_PARENTS, b"parents_left[NO_NODE] is NO_PARENTS")
        for k in range(queue.size):
            invariant(tape.parents_left[queue.items[k]] == 0,
                      b"parent counts are clear after an ordering pass")


# ------------------------------------------------------------------ Kahn's algorithm

cdef int count_parents(NodeList* queue) except -1:
    """Enqueues every node reachable from the roots queue.items[:queue.size] once (roots
    first) and sets parents_left[c] to the number of edges into c from reachable parents,
    plus 1 for a root, which keeps roots from being enqueued twice (ready_roots takes it
    off). Returns 1 if a reachable node's rule may be Python code (a CUSTOM node, or any
    node while some built-in op's _backward is overridden), else 0. On failure every
    count is back to 0."""
    cdef Py_ssize_t h = 0, k, n
    cdef node_t v, c
    cdef node_t* kids
    cdef int custom = tape.overridden > 0
    cdef int32_t* left = tape.parents_left
    for k in range(queue.size):
        left[queue.items[k]] = 1
    try:
        while h < queue.size:
            prefetch_ahead(queue.items, h, queue.size, False)
            v = queue.items[h]
            h += 1
            check_node(v)
            if has_child_list(tape.op[v]):
                custom |= tape.op[v] == CUSTOM
                kids = tape.param[v].kids
                n = kids[0] if kids != NULL else 0
                for k in range(1, n + 1):
                    c = kids[k]
                    if left[c] == 0:
                        list_push(queue, c)
                    left[c] += 1
            else:
                # branch-free: a missing child is -1, whose count is never 0; the slot at
                # queue.size is always written, and kept if the child is new
                if queue.size + 2 > queue.capacity:
                    list_grow(queue)
                c = tape.lhs[v]
                queue.items[queue.size] = c
                queue.size += left[c] == 0
                left[c] += 1
                c = tape.rhs[v]
                queue.items[queue.size] = c
                queue.size += left[c] == 0
                left[c] += 1
    except MemoryError:
        # a node's count is raised only after it was enqueued
        for k in range(queue.size):
            left[queue.items[k]] = 0
        left[NO_NODE] = NO_PARENTS
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
        tape.parents_left[r] -= 1
        if tape.parents_left[r] == 0:
            queue.items[ready] = r
            ready += 1
    return ready


cdef inline void release_children(node_t v, node_t* queue, Py_ssize_t* t) noexcept nogil:
    """Counts v as done for each child; a child whose parents are all done is enqueued."""
    cdef node_t c, k, n
    cdef node_t* kids
    cdef int32_t* left = tape.parents_left
    if has_child_list(tape.op[v]):
        kids = tape.param[v].kids
        n = kids[0] if kids != NULL else 0
        for k in range(1, n + 1):
            c = kids[k]
            left[c] -= 1
            if left[c] == 0:
                queue[t[0]] = c
                t[0] += 1
        return
    # a missing child is -1, as in count_parents; the enqueue stays a branch (predicted
    # well on regular graphs, where a data dependency through t would not be)
    c = tape.lhs[v]
    left[c] -= 1
    if left[c] == 0:
        queue[t[0]] = c
        t[0] += 1
    c = tape.rhs[v]
    left[c] -= 1
    if left[c] == 0:
        queue[t[0]] = c
        t[0] += 1


cdef void finish_order(NodeList* queue, Py_ssize_t ready) noexcept nogil:
    """Rewrites the queue of count_parents so that every node comes before its children.

    Kahn's algorithm: from the ready roots again, a node is enqueued once its last parent
    has been, which brings every parents_left[c] back to 0. It visits the same nodes, so
    the queue cannot grow and nothing here can fail.
    """
    cdef Py_ssize_t h = 0, t = ready
    while h < t:
        prefetch_ahead(queue.items, h, t, False)
        release_children(queue.items[h], queue.items, &t)
        h += 1
    check_counts_clear(queue)


cdef void kahn_sweep(NodeList* queue, Py_ssize_t ready) noexcept nogil:
    """finish_order fused with the sweep, for graphs whose rules are all built in: a
    node's rule is applied when it leaves the queue, by which time all its parents' have
    been."""
    cdef Py_ssize_t h = 0, t = ready
    while h < t:
        prefetch_ahead(queue.items, h, t, True)
        apply_builtin_rule(queue.items[h])
        release_children(queue.items[h], queue.items, &t)
        h += 1
    check_counts_clear(queue)


cdef int sweep(NodeList* topo) except -1:
    """Applies every node's rule, Python ones included, in topo's order (parents first)."""
    cdef Py_ssize_t s
    for s in range(topo.size):
        prefetch_ahead(topo.items, s, topo.size, True)
        apply_rule(topo.items[s])
    return 0


cdef void sweep_builtin(NodeList* topo) noexcept nogil:
    """sweep() for graphs whose rules are all built in (DESCENDS roots): no Python."""
    cdef Py_ssize_t s
    for s in range(topo.size):
        prefetch_ahead(topo.items, s, topo.size, True)
        apply_builtin_rule(topo.items[s])


# ------------------------------------------------------------ one pass down the slots

# A descending pass may skip this many unreached slots, plus SKIP_RATIO per node swept,
# before it hands the rest of the graph to Kahn's algorithm; an aligned word of 8
# unreached slots counts as one. (Counted slot by slot, the gaps in a graph built beside
# another live one used the budget up: microgpt's loop keeps a step's graph alive while
# the next is built, and each of its graphs was handed over near its top, which took
# twice the instructions of the same graph alone; 2026-12-07.)
cdef enum:
    SKIP_SLACK = 4096
    SKIP_RATIO = 8


cdef inline bint unreached_word(const uint8_t* reached) noexcept nogil:
    # reached[0..7] all 0 (one 8-byte load: memcpy, as the bytes are not a uint64_t)
    cdef uint64_t word
    memcpy(&word, reached, 8)
    return word == 0


cdef inline node_t mark_children(node_t v) noexcept nogil:
    """Marks v's children reached (reached[NO_NODE] is 1 already, so "no child" is never
    new); returns how many were not reached before."""
    cdef node_t c, k, n, new = 0
    cdef node_t* kids
    cdef uint8_t* reached = tape.reached
    if has_child_list(tape.op[v]):     # (AFFINE or LOCAL: a CUSTOM node never descends)
        kids = tape.param[v].kids
        n = kids[0]
        for k in range(1, n + 1):
            c = kids[k]
            new += reached[c] == 0
            reached[c] = 1
        return new
    c = tape.lhs[v]
    new += reached[c] == 0
    reached[c] = 1
    c = tape.rhs[v]
    new += reached[c] == 0
    reached[c] = 1
    return new


cdef Py_ssize_t hand_overs = 0       # passes finished by hand_over (for the tests)


cdef int hand_over(NodeList* done, NodeList* rest) except -1:
    """Finishes a descending pass stopped partway with Kahn's algorithm. The nodes reached
    but not swept are exactly the marked children of the swept ones (done); they and all
    below them lie under the pass, so count_parents from them as roots finds what is left,
    with the right parent counts. Returns 1 once swept; 0, with every mark as it was, if
    memory ran out (the pass then goes on)."""
    global hand_overs
    cdef Py_ssize_t k, j, n, roots
    cdef node_t v, c
    cdef node_t* kids
    cdef bint ok = True
    for k in range(done.size):
        v = done.items[k]
        kids = tape.param[v].kids if has_child_list(tape.op[v]) else NULL
        n = kids[0] if kids != NULL else 2
        for j in range(1, n + 1):
            c = kids[j] if kids != NULL else (tape.lhs[v] if j == 1 else tape.rhs[v])
            if ok and c >= 0 and tape.reached[c]:
                ok = list_try_push(rest, c)
                if ok:
                    tape.reached[c] = 0
    roots = rest.size
    if ok:
        try:
            count_parents(rest)
        except MemoryError:
            ok = False
    if not ok:
        for k in range(roots):
            tape.reached[rest.items[k]] = 1
        return 0
    kahn_sweep(rest, ready_roots(rest, roots))
    hand_overs += 1
    return 1


cdef int descending_backward(node_t root) except -1:
    """backward() from a DESCENDS root in one pass down the slots: every reached node is
    swept as the pass gets to it (its parents are all above it, so already swept) and
    marks its children reached; the pass ends when no reached node is left below. The
    nodes swept are recorded as the root's order for the cache (if memory allows).

    A small graph far above its leaves would make the pass walk many unreached slots; so
    past a budget of skipped slots (SKIP_SLACK, SKIP_RATIO) the rest goes to hand_over.
    A linear call's rows mark their x once for all of them (row_rule_marking), and rows
    with LEAF_WEIGHTS do not mark their weights: leaves have no rule to sweep, and the
    pass need not go down to them (nor does the order it records hold them)."""
    cdef NodeList done, rest
    cdef node_t i = root, pending = 1, c
    cdef Py_ssize_t budget = SKIP_SLACK, k
    cdef bint recording = True, ahead = root > PREFETCH_SLOTS
    memset(&done, 0, sizeof(NodeList))
    memset(&rest, 0, sizeof(NodeList))
    tape.grad[root] = 1.0
    tape.reached[root] = 1
    tape.passes += 1
    try:
        while pending:
            if ahead and i >= AHEAD:
                # prefetch_children(i - AHEAD, True), spelled out (1.5 ns/node faster, measured)
                c = tape.lhs[i - AHEAD]
                prefetch(&tape.grad[c]); prefetch(&tape.value[c]); prefetch(&tape.reached[c])
                c = tape.rhs[i - AHEAD]
                prefetch(&tape.grad[c]); prefetch(&tape.value[c]); prefetch(&tape.reached[c])
            if tape.reached[i]:
                tape.reached[i] = 0
                pending -= 1
                if tape.op[i] == LOCAL:     # (the fused layers' nodes: one loop, not two)
                    check_node(i)
                    trace(b"rule", i)
                    if tape.flags[i] & IN_CHUNK:
                        pending += row_rule_out_of_line(i, tape.reached)
                    else:
                        pending += local_rule_marking(i, tape.reached)
                elif tape.op[i] == LEAF:    # (no rule, no children: parameters, constants)
                    check_node(i)
                    trace(b"rule", i)
                else:
                    apply_builtin_rule(i)
                    pending += mark_children(i)
                if done.size < done.capacity:
                    done.items[done.size] = i
                    done.size += 1
                elif recording:
                    recording = list_try_push(&done, i)
                budget += SKIP_RATIO
            else:
                # (unreached: where slot i tops an aligned word of 8 unreached slots, the
                # pass skips the word at once, and the budget counts it once)
                if i & 7 == 7 and unreached_word(&tape.reached[i - 7]):
                    i -= 7
                budget -= 1
                if budget == 0 and recording:
                    if hand_over(&done, &rest):
                        break
                    budget = PY_SSIZE_T_MAX    # out of memory: the pass goes on
            i -= 1
        invariant(tape.reached[NO_NODE] == 1, b"reached[NO_NODE] stays 1")
        if recording:
            for k in range(rest.size):
                if not list_try_push(&done, rest.items[k]):
                    return 0
            keep_order(root, &done)
    finally:
        PyMem_Free(done.items)
        PyMem_Free(rest.items)
    return 0


# ------------------------------------------------------------------------- backward

cdef int backward_from(node_t root) except -1:
    """micrograd's backward: root.grad = 1, then every reachable node's rule, each node
    after all its parents.

    A DESCENDS root's graph is swept in one pass down the slots (descending_backward).
    Otherwise Kahn's algorithm orders it: count_parents, then, with built-in rules only,
    a node is swept as soon as its last parent has been (kahn_sweep); with Python rules,
    the order is finished first (parents_left[] all 0 again), since their Python code may
    start another backward. While some built-in op's _backward is overridden, every graph
    takes that last path (its DESCENDS bits were fixed before the override).

    A node's children never change, so neither does its order: the first backward() from
    a root caches it (in _orders, until the root is freed) and later ones only sweep it.
    The cached orders hold at most max(2 * live nodes, 2**20) slots in all. Right after a
    recompute() (no value changed since), the sweep is the replay's instead: the same
    grads, from the derivatives recompute() recorded (replay_backward)."""
    cdef NodeList queue
    cdef bytes cached
    cdef _Replay replay
    cdef bint builtin_only = tape.overridden == 0 and tape.flags[root] & DESCENDS
    if tape.flags[root] & HAS_REPLAY:
        replay = _replays[root]
        if replay.stamp == tape.epoch:
            tape.grad[root] = 1.0
            replay_backward(replay)
            return 0
    if tape.flags[root] & HAS_ORDER:
        cached = _orders[root]
        queue.items = <node_t*>PyBytes_AS_STRING(cached)
        queue.size = queue.capacity = len(cached) // sizeof(node_t)
        tape.grad[root] = 1.0
        if builtin_only:
            sweep_builtin(&queue)
            return 0
        return sweep(&queue)
    if builtin_only:
        return descending_backward(root)
    memset(&queue, 0, sizeof(NodeList))
    try:
        list_push(&queue, root)
        if count_parents(&queue):
            finish_order(&queue, ready_roots(&queue, 1))
            tape.grad[root] = 1.0
            sweep(&queue)
        else:
            tape.grad[root] = 1.0
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
    if tape.flags[root] & HAS_ORDER:
        return _orders[root]
    try:
        order = PyBytes_FromStringAndSize(<char*>queue.items, queue.size * sizeof(node_t))
    except MemoryError:
        return None                     # callers fall back to their own copy
    if tape.cached + queue.size <= max(2 * <Py_ssize_t>tape.live, 1 << 20):
        _orders[root] = order
        tape.flags[root] |= HAS_ORDER
        tape.cached += queue.size
    return order


cdef void forget_orders() noexcept:
    """Drops every cached order. (An order the descending pass recorded leaves out the
    leaf weights of linear rows, which have no rule: a leaf given a _backward then must
    be in the order, so assigning one calls this.)"""
    cdef node_t i
    for i in _orders:
        tape.flags[i] &= ~HAS_ORDER
    _orders.clear()
    tape.cached = 0


cdef bytes order_of(node_t root):
    """root's reachable slots, parents first: the cached order, or a new one (cached if
    the budget allows)."""
    cdef NodeList queue
    cdef object order
    if tape.flags[root] & HAS_ORDER:
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
