# C declarations of the tape arena. Declarations only: implementations are in _core.pyx.
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint64_t
from cpython.object cimport PyObject

ctypedef double real_t      # a node's value, grad and constant parameter
ctypedef int32_t node_t     # a slot index into the tape; -1 means "none"

# Mirrors fastgrad.ops.Op (checked by tests/test_opcodes.py). Append only.
cpdef enum Op:
    LEAF = 0
    ADD = 1
    MUL = 2
    POW = 3
    RELU = 4
    TANH = 5
    EXP = 6
    CUSTOM = 7
    AFFINE = 8
    LOG = 9
    SIGMOID = 10
    SQRT = 11
    ABS = 12
    POWV = 13
    COUNT = 14

# Bits of Tape.flags[i].
cdef enum:
    HAS_LABEL = 1   # _labels holds this node's label
    HAS_OPSTR = 2   # _opstrs holds this node's `_op` string
    HAS_FN = 4      # the node's handle holds a Python _backward (so the handle exists)
    PINNED = 8      # the tape holds a strong reference to the handle (HAS_FN and a parent)
    POW_INT = 16    # POW: the exponent was an int, shown without a decimal point
    POW_BOOL = 32   # POW: the exponent was a bool, shown as True/False
    FREE = 64       # the slot is on the free list
    HAS_ORDER = 128 # _orders holds the order a backward() from this node computed
    DESCENDS = 256  # every edge under this node goes to a lower slot, and no CUSTOM node
                    # is under it: decreasing slot order is a topological order of its graph
    HAS_REPLAY = 512  # _replays holds the replay recompute() built for this node

# waiting[-1]: never reaches 0, however many passes count and uncount it.
cdef enum:
    NO_PARENTS = 1 << 30

# The children of a CUSTOM or AFFINE node: kids[0] is their number n, kids[1..n] the slots.
ctypedef union param_t:
    real_t exponent   # POW: the constant exponent k
    node_t* kids      # CUSTOM, AFFINE: malloc'd child list (NULL when there are none)

# The arena: one element of each array per slot.
# Invariants:
#   - a slot is live while its handle lives or a live parent names it as a child; then
#     refs[i] = (number of child references to i from live parents, counted once per
#     edge, so `a + a` counts 2) + (1 if handle[i] is not NULL);
#   - a live slot's index never moves; free slots have the FREE flag and form a list
#     threaded through lhs, sorted by index before the next allocation once half the
#     arena has been freed since the last sort;
#   - lhs/rhs are -1 where the op has fewer children; CUSTOM and AFFINE keep theirs in
#     param[i].kids (AFFINE: b, w0, x0, w1, x1, ...) and have lhs = rhs = -1;
#   - children of a node were created before it, but slot reuse means index order is not
#     always topological order. Where it is (DESCENDS, fixed when the node is made, since
#     slots and children never change), backward sweeps the slots downwards from the root;
#     elsewhere it orders the reachable nodes with Kahn's algorithm;
#   - waiting[i] is 0 outside an ordering pass.
cdef struct Tape:
    real_t* value       # value[i]: the node's data (forward result)
    real_t* grad        # grad[i]: d(root)/d(node), accumulated by the reverse sweep
    real_t* grad_block  # the allocation of grad; its first element is grad[-1], a scratch
                        # slot that "no child" (-1) accumulates into (replay sweeps)
    param_t* param      # param[i]: POW exponent, or CUSTOM / AFFINE child list
    node_t* lhs         # lhs[i]: first child, -1 if none; next free slot when free
    node_t* rhs         # rhs[i]: second child, -1 if none
    int32_t* refs       # refs[i]: parent edges + live handle, as above; 0 when free
    int32_t* waiting_block  # the allocation of waiting; its first element is waiting[-1],
                        # which never reaches 0, so that -1 ("no child") needs no branch
    int32_t* waiting    # waiting[i]: during ordering, reachable parents not yet ordered;
                        # 0 outside ordering (waiting_block + 1)
    uint8_t* op         # op[i]: an Op code
    uint16_t* flags     # flags[i]: HAS_LABEL | HAS_OPSTR | ... bits
    PyObject** handle   # handle[i]: borrowed pointer to the live Value handle, or NULL
    node_t size         # slots [0, size) have been handed out at least once
    node_t capacity     # length of every array
    node_t free_head    # first free slot below size, or -1
    node_t live         # number of live slots
    node_t freed        # slots freed since the free list was last sorted
    Py_ssize_t cached   # slots held by the cached orders (_orders)
    Py_ssize_t replayed # steps held by the cached replays (_replays)
    uint64_t epoch      # bumped whenever a live node's value may have changed other than
                        # by push (data assigned, recompute(), an optimizer step): a
                        # replay's derivatives are current while its stamp equals it

# One step of a replay (see _Replay in _core.pyx): a node with micrograd's rule in the one
# form every op's rule has, grad[lhs] += dl * grad[node]; grad[rhs] += dr * grad[node];
# but an AFFINE node's, a loop over its terms, is applied whole (lhs is its bias b).
cdef struct Step:
    node_t node
    node_t lhs          # a child; -1 (grad[-1], the scratch slot) for none
    node_t rhs
    int32_t op          # the node's Op
    real_t dl           # d node / d lhs, at the values of the replay's stamp
    real_t dr           # d node / d rhs (0 where rhs is -1)

# A growable list of slots, the scratch space of ordering passes.
cdef struct NodeList:
    node_t* items
    Py_ssize_t size
    Py_ssize_t capacity

# Failure contracts: `except -1` functions raise MemoryError (or the exception named)
# and leave the tape exactly as it was; `noexcept` functions cannot fail.
cdef int reserve(node_t n) except -1             # room for n more slots
cdef node_t push(uint8_t op, real_t value, node_t lhs, node_t rhs) noexcept  # after reserve
cdef void release(node_t i) noexcept             # drop one reference to i, free what dies
cdef int count_parents(NodeList* queue) except -1  # 1 if CUSTOM nodes reachable
cdef Py_ssize_t ready_roots(NodeList* queue, Py_ssize_t nroots) noexcept nogil
cdef void finish_order(NodeList* queue, Py_ssize_t ready) noexcept nogil  # parents-first
cdef int sweep(NodeList* topo) except -1         # rules in topo order; -1 if a _backward raised
cdef int backward_from(node_t root) except -1    # micrograd's backward from root
cdef int recompute_from(node_t root) except -1   # forward again; all or nothing
cdef int apply_rule(node_t i) except -1          # node i's local chain rule
