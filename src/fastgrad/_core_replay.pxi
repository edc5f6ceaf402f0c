# recompute(): replaying a recorded graph in C. (Part of _core.pyx.)
#
# recompute() turns a root's order into a replay: one Step per node but leaves, parents
# first. Walked backwards it re-evaluates the graph, recording each step's local
# derivatives as it goes (the values are at hand then: replay_forward calls the same
# derivative functions as the rules); walked forwards it is backward(), every rule in the
# one form
#     grad[lhs] += dl * grad[node];  grad[rhs] += dr * grad[node]
# with no op to dispatch on (an AFFINE node's rule, a loop over its terms, is applied
# whole): the same products, added in the same order as the rules' sweep over the order
# adds them, so the grads are the same to the bit. The derivatives hold while no value
# changes: `stamp` is the epoch they were computed at, and backward() uses them only while
# tape.epoch has not moved since (assigning data, an optimizer step and every recompute()
# move it). Measured on the ops graph: backward 8 -> 2 ns/node, and recompute -2 ns/node
# from the runs of group_by_op.

# A replay of more steps than this is memory-bound, and its loops prefetch. Below it
# the values and grads they read (16 bytes a slot) stay in a core's 1 MB cache, and
# prefetching only costs: 107 against 86 us for the replayed backward of micrograd's
# demo graph (65k steps); on random ops graphs it pays from about this size (1M nodes:
# 21 ns per node recomputed and swept with it, 25-29 without; 2026-12-04).
cdef enum:
    PREFETCH_STEPS = 1 << 17
    ANY_OP = -1                 # recompute_run's o for the steps of every op


cdef class _Replay:
    """What recompute() caches for one root (in _replays, until the root is freed)."""
    cdef Step* steps
    cdef Py_ssize_t size
    cdef uint64_t stamp         # tape.epoch when dl/dr were computed; 0: never
    cdef bint can_raise         # a step's forward can raise: recompute() saves as it goes

    def __dealloc__(self):
        PyMem_Free(self.steps)


cdef inline void init_step(Step* e, node_t node, int32_t op, node_t lhs, node_t rhs) noexcept nogil:
    e.node = node
    e.op = op
    e.lhs = lhs
    e.rhs = rhs
    e.dl = e.dr = 0.0


cdef bint has_python_rule(node_t v) noexcept:
    # a node whose value or rule is Python code: a custom op with children, or any node
    # whose _backward was assigned; a replay can rerun neither
    return (tape.op[v] == CUSTOM and tape.param[v].kids != NULL) or tape.flags[v] & HAS_FN


cdef str op_string(node_t v):
    # the node's `_op` as a message shows it (a microgpt-style handle has no `_op`)
    return _opstrs[v] if tape.flags[v] & HAS_OPSTR else _SYMBOL[tape.op[v]]


cdef _Replay make_replay(node_t root):
    """root's replay, from its order. A graph with a node whose value or rule is Python
    code is refused with TypeError naming the node's op."""
    cdef bytes order = order_of(root)
    cdef node_t* items = <node_t*>PyBytes_AS_STRING(order)
    cdef Py_ssize_t n = len(order) // sizeof(node_t), k, size = 0
    cdef node_t v
    cdef _Replay r = _Replay.__new__(_Replay)
    for k in range(n):                  # count the steps, refusing Python code
        v = items[k]
        if has_python_rule(v):
            raise TypeError(
                f"recompute() cannot re-evaluate the custom op {op_string(v)!r}: "
                "its value or its _backward is Python code; rebuild the graph instead")
        elif tape.op[v] == LOCAL:
            raise TypeError(
                "recompute() cannot re-evaluate a node made with its local gradients "
                "(Value(data, children, local_grads), or a fastgrad.functional helper): "
                "they are constants of the values it was made from; rebuild the graph instead")
        elif tape.op[v] != LEAF and tape.op[v] != CUSTOM:
            size += 1
    grow_replay_levels()
    safe_realloc(<void**>&r.steps, size if size else 1, sizeof(Step))
    for k in range(n):
        v = items[k]
        if tape.op[v] == AFFINE:        # (its rule is applied whole: affine_rule)
            init_step(&r.steps[r.size], v, AFFINE, tape.param[v].kids[1], -1)
            r.size += 1
        elif tape.op[v] != LEAF and tape.op[v] != CUSTOM:
            init_step(&r.steps[r.size], v, tape.op[v], tape.lhs[v], tape.rhs[v])
            r.can_raise |= forward_can_raise(tape.op[v])
            r.size += 1
    group_by_op(r)
    return r


cdef void forget_replays():
    """Drops every cached replay (an assigned _backward may sit in any of them)."""
    cdef node_t i
    for i in _replays:
        tape.flags[i] &= ~HAS_REPLAY
    _replays.clear()
    tape.replayed = 0


# group_by_op reorders a replay's steps within windows of this many
cdef enum:
    WINDOW = 64


cdef inline void raise_level(node_t x, uint8_t* level, uint8_t lv) noexcept nogil:
    # x's grad is added into by a step of level lv - 1 (x = -1 is "no child": skipped)
    if x >= 0:
        level[x] = lv


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
    every other step; in runs, it is predicted, and a run of ADDs, MULs, AFFINEs or
    RELUs is one loop of that op's own (recompute_run). replay_level[] holds the levels meanwhile
    (at most WINDOW, so a byte), and is 0 again on return."""
    cdef Py_ssize_t m = r.size, f0 = 0, f, n, key, top
    cdef int32_t count[WINDOW * 16 + 1]
    cdef int32_t keys[WINDOW]
    cdef Step window[WINDOW]
    cdef Step* e
    cdef node_t* kids
    cdef node_t j
    cdef uint8_t* level = tape.replay_level
    cdef uint8_t lv
    while f0 < m:
        n = min(<Py_ssize_t>WINDOW, m - f0)
        top = 0
        for f in range(n):
            e = &r.steps[f0 + f]
            lv = max(level[e.node], level[e.lhs])
            if e.rhs >= 0:
                lv = max(lv, level[e.rhs])
            if e.op == AFFINE:
                kids = tape.param[e.node].kids
                for j in range(1, kids[0] + 1):
                    lv = max(lv, level[kids[j]])
                for j in range(1, kids[0] + 1):
                    level[kids[j]] = lv + 1
            raise_level(e.lhs, level, lv + 1)   # (lv is above every level they held)
            raise_level(e.rhs, level, lv + 1)
            keys[f] = lv * 16 + (e.op & 15)     # (were ops to pass 15, two would share runs)
            top = max(top, keys[f])
        for f in range(n):
            e = &r.steps[f0 + f]
            raise_level(e.lhs, level, 0)
            raise_level(e.rhs, level, 0)
            if e.op == AFFINE:
                kids = tape.param[e.node].kids
                for j in range(1, kids[0] + 1):
                    level[kids[j]] = 0
            invariant(level[e.node] == 0, b"replay levels are clear after a window")
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
    if tape.flags[root] & HAS_REPLAY:
        return _replays[root]
    r = make_replay(root)
    if tape.replayed + r.size <= max(2 * <Py_ssize_t>tape.live, 1 << 20):
        _replays[root] = r
        tape.flags[root] |= HAS_REPLAY
        tape.replayed += r.size
    return r


cdef inline int recompute_run(Step* steps, Py_ssize_t* at, int32_t o, bint ahead,
                              real_t* saved) except -1:
    """Re-evaluates steps[*at], steps[*at - 1], ... while they are o's (a run of
    group_by_op; every step left if o is ANY_OP), zeroing their grads, and moves *at down
    past them (to -1 at the end; an exception leaves it at the failed step). Prefetches
    for the steps AHEAD if ahead; first saves each step's value and grad at saved[2k],
    saved[2k + 1] unless saved is NULL. Called with constants, it compiles to one loop
    per call: with an op, that op's own, with no dispatch."""
    cdef Step* e
    while at[0] >= 0 and (o == ANY_OP or steps[at[0]].op == o):
        if ahead and at[0] >= AHEAD:
            e = &steps[at[0] - AHEAD]
            prefetch(&tape.value[e.node])
            prefetch(&tape.grad[e.node])
            prefetch(&tape.value[e.lhs])
            prefetch(&tape.value[e.rhs])
        e = &steps[at[0]]
        if saved != NULL:
            saved[2 * at[0]] = tape.value[e.node]
            saved[2 * at[0] + 1] = tape.grad[e.node]
        tape.grad[e.node] = 0.0
        replay_forward(e, e.op if o == ANY_OP else o)
        at[0] -= 1
    return 0


cdef int recompute_from(node_t root) except -1:
    """Re-evaluates every node under root, children first, from the leaves' current data,
    and zeroes the grads of the nodes it re-evaluated: the graph is then as if built anew
    from those leaves. A graph with Python code in it (a custom op, an assigned
    _backward) is refused up front with TypeError, whatever the values. Otherwise all or
    nothing: if an op raises (0 ** -1, exp overflow), every value and grad is put back and
    the exception propagates; the values and grads it overwrites are saved only if one
    of its ops can raise (the demo's MLP has none: no 16 bytes per node written and read
    back). One pass backwards over the replay. A large one is memory-bound: one loop,
    prefetching and saving as it goes. A small one, in cache, is saved first, then
    re-evaluated a loop per run of one op, those of micrograd's neurons (ADD and MUL,
    AFFINE for a fused one, RELU) each with its own; micrograd's demo graph (65k steps)
    went from 220 to 100 us."""
    cdef _Replay r = replay_of(root)
    cdef Step* steps = r.steps
    cdef Py_ssize_t s = r.size - 1, k
    cdef real_t* saved = NULL           # saved[2k], saved[2k + 1]: value and grad at step k
    cdef bint ahead = r.size > PREFETCH_STEPS
    cdef int32_t o
    if r.can_raise:
        safe_realloc(<void**>&saved, 2 * r.size + 2, sizeof(real_t))
        if not ahead:                   # (else saved as it goes)
            for k in range(r.size):
                saved[2 * k] = tape.value[steps[k].node]
                saved[2 * k + 1] = tape.grad[steps[k].node]
    r.stamp = 0                         # (its derivatives are about to be overwritten)
    try:
        while s >= 0:
            o = steps[s].op
            if ahead:
                recompute_run(steps, &s, ANY_OP, True, saved)
            elif o == ADD:
                recompute_run(steps, &s, ADD, False, NULL)
            elif o == MUL:
                recompute_run(steps, &s, MUL, False, NULL)
            elif o == AFFINE:
                recompute_run(steps, &s, AFFINE, False, NULL)
            elif o == RELU:
                recompute_run(steps, &s, RELU, False, NULL)
            else:
                recompute_run(steps, &s, o, False, NULL)
    except BaseException:
        invariant(r.can_raise, b"a replay whose ops cannot raise raised")
        if saved != NULL:
            for k in range(r.size - 1, s - 1, -1):  # what this pass touched, the failed step too
                tape.value[steps[k].node] = saved[2 * k]
                tape.grad[steps[k].node] = saved[2 * k + 1]
        raise
    finally:
        PyMem_Free(saved)
    tape.epoch += 1
    r.stamp = tape.epoch
    return 0


cdef void replay_backward(_Replay r) noexcept nogil:
    """backward() from a replay's root, with the derivatives its recompute() recorded
    (current: r.stamp == tape.epoch)."""
    cdef Step* steps = r.steps
    cdef Step* e
    cdef Py_ssize_t s
    cdef real_t g
    # the steps below this prefetch for the step AHEAD: none on a replay that fits the cache
    cdef Py_ssize_t prefetching = r.size - AHEAD if r.size > PREFETCH_STEPS else 0
    for s in range(r.size):
        if s < prefetching:
            e = &steps[s + AHEAD]
            prefetch(&tape.grad[e.lhs])
            prefetch(&tape.grad[e.rhs])
        e = &steps[s]
        trace(b"replayed rule", e.node)
        if e.op == AFFINE:              # its rule is a loop over its terms
            affine_rule(e.node)
            continue
        g = tape.grad[e.node]
        tape.grad[e.lhs] += e.dl * g
        tape.grad[e.rhs] += e.dr * g
