# C declarations of the tape arena: types, the op enum and structs only. The functions
# are in the parts that _core.pyx includes (they are not a C API: nothing cimports them).
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
    LOCAL = 14
    COUNT = 15

# Bits of Tape.flags[i].
cdef enum:
    HAS_LABEL = 1   # _labels holds this node's label
    HAS_OPSTR = 2   # _opstrs holds this node's `_op` string
    HAS_FN = 4      # the node's handle holds a Python _backward (so the handle exists)
    PINNED = 8      # the tape holds a strong reference to the handle (HAS_FN and a parent)
    POW_INT = 16    # POW: the exponent was an int, shown without a decimal point
    POW_BOOL = 32   # POW: the exponent was a bool, shown as True/False
    FREE = 64       # the slot is free (its bit in free_map[0] is set)
    HAS_ORDER = 128 # _orders holds the order a backward() from this node computed
    DESCENDS = 256  # every edge under this node goes to a lower slot, and no CUSTOM node
                    # is under it: decreasing slot order is a topological order of its graph
    HAS_REPLAY = 512  # _replays holds the replay recompute() built for this node
    IN_CHUNK = 1024 # LOCAL: the node's block lies in a chunk shared by the rows of one
                    # linear call (see new_chunk)
    LEAF_WEIGHTS = 2048  # IN_CHUNK: the row's weights (its odd children) are leaves, so
                    # the descending pass need not mark them reached (a leaf has no rule)
    RELU_ROW = 4096 # IN_CHUNK: the row is relu(sum) (linear(..., relu=True)): its value is
                    # the ReLU's, and its rule first multiplies grad by relu_da(value)
    ROW_BIAS = 8192 # IN_CHUNK, from a Matrix: the row's last term is its bias b times x's
                    # last entry, a leaf of 1.0 (linear(x, w, bias)); the row holds b (its
                    # Matrix holds the other weights), and the descending pass marks b
                    # even with LEAF_WEIGHTS
    SCALED_ROW = 16384  # IN_CHUNK: the row is sum * c, c its chunk's scale (attention's
                    # logits over hd ** 0.5): its rule first multiplies grad by c

cdef enum:
    FREE_LEVELS = 6         # levels of the free-slot tree: 64**6 slots > the 2**31 - 1 a
                            # tape can hold, so the top level is one word

cdef enum:
    NO_NODE = -1            # "no child": a valid index into grad, parents_left, reached
    NO_PARENTS = 1 << 30    # parents_left[NO_NODE]: never reaches 0, however many passes
                            # count and uncount it

# The children of a CUSTOM, AFFINE or LOCAL node: kids[0] is their number n, kids[1..n]
# the slots; a LOCAL node's block goes on with its n constant local derivatives (real_t,
# 8-byte aligned: see local_grads_of).
ctypedef union param_t:
    real_t exponent   # POW: the constant exponent k
    node_t* kids      # CUSTOM, AFFINE, LOCAL: malloc'd child list (NULL when there are none)

# The arena: one element of each array per slot.
# Invariants:
#   - a slot is live while its handle lives or a live parent names it as a child; then
#     refs[i] = (number of child references to i from live parents, counted once per
#     edge, so `a + a` counts 2, but once for all the rows of one linear call whose x
#     holds i: their chunk holds that reference, and not at all for the rows made from
#     a Matrix whose weights hold i: the Matrix holds i's handle, and the chunk the
#     Matrix) + (1 if handle[i] is not NULL);
#   - a live slot's index never moves; a free slot below size has the FREE flag and its
#     bit set in free_map; a new node takes the lowest
#     free slot above its highest child (a leaf: the lowest free slot), or slot size when
#     there is none (free slots: size - live), or when the arena is full the lowest free
#     slot; so every edge goes to a lower slot unless it was made in a full arena;
#   - lhs/rhs are -1 where the op has fewer children; CUSTOM, AFFINE and LOCAL keep theirs
#     in param[i].kids (AFFINE: b, w0, x0, w1, x1, ...) and have lhs = rhs = -1;
#   - children of a node were created before it and (but in a full arena) lie in lower
#     slots. Where every edge under a root goes down and no node under it has a Python
#     rule (DESCENDS, fixed when the node is made, since slots and children never change),
#     backward sweeps the slots downwards from the root; elsewhere it orders the reachable
#     nodes with Kahn's algorithm;
#   - index -1 ("no child") is readable and writable in grad, parents_left and reached
#     (each of those allocations has one element in front), so that a pass over a node's
#     two children needs no branch for a missing one;
#   - the scratch state of the passes is clear outside them: parents_left[i] == 0,
#     reached[i] == 0, replay_level[i] == 0 for every i < size (checked by
#     _test_scratch_clear), and above size too (fresh pages: see map_scratch).
cdef struct Tape:
    real_t* value       # value[i]: the node's data (forward result)
    real_t* grad        # grad[i]: d(root)/d(node), accumulated by the reverse sweep;
                        # grad[-1] is scratch that "no child" accumulates into
    param_t* param      # param[i]: POW exponent, or CUSTOM / AFFINE child list
    node_t* lhs         # lhs[i]: first child, -1 if none; next free slot when free
    node_t* rhs         # rhs[i]: second child, -1 if none
    int32_t* refs       # refs[i]: parent edges + live handle, as above; 0 when free
    int32_t* parents_left  # parents_left[i]: during Kahn's ordering, the reachable
                        # parents of i not yet ordered; parents_left[-1] is NO_PARENTS
    uint8_t* reached    # reached[i]: during a descending backward pass, 1 if i was reached
                        # from the root and not yet swept; reached[NO_NODE] is always 1
    uint8_t* replay_level  # replay_level[i]: while a replay's steps are regrouped, one
                        # more than the level of the last step that added into grad[i]
                        # (NULL until the first replay is made)
    uint8_t* op         # op[i]: an Op code
    uint16_t* flags     # flags[i]: HAS_LABEL | HAS_OPSTR | ... bits
    PyObject** handle   # handle[i]: borrowed pointer to the live Value handle, or NULL
    node_t size         # slots [0, size) have been handed out at least once
    node_t capacity     # length of every array
    uint64_t* free_map[FREE_LEVELS]   # the free slots as a tree of bitmaps: bit i % 64
                        # of free_map[0][i / 64] is set iff slot i (< size) is free, and
                        # bit j % 64 of free_map[k][j / 64] iff free_map[k - 1][j] is not 0
    Py_ssize_t free_map_words[FREE_LEVELS]  # the length of each level (at least 1 word)
    int free_levels     # the levels searched: up to the lowest that is one word
    node_t free_top     # no slot above this one is free
    node_t live         # number of live slots
    node_t overridden   # live nodes of a built-in op whose _backward was assigned: while
                        # any exist, every backward() takes the sweep that can call Python
    Py_ssize_t cached   # slots held by the cached orders (_orders)
    Py_ssize_t replayed # steps held by the cached replays (_replays)
    uint64_t passes     # descending passes begun: the stamp with which a pass marks the
                        # x of a linear call's rows once for all of them (see new_chunk)
    uint64_t epoch      # bumped whenever a live node's value may have changed other than
                        # by push (data assigned, recompute(), an optimizer step): a
                        # replay's derivatives are current while its stamp equals it

# One step of a replay (see replay.pxi): a node with its rule in the one form every
# op's rule has, grad[lhs] += dl * grad[node]; grad[rhs] += dr * grad[node]; but an
# AFFINE node's, a loop over its terms, is applied whole (lhs is its bias b).
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
