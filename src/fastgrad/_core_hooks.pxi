# Hooks for the test suite: counts and checks of the arena's internals, injected
# allocation failures. (Part of _core.pyx.)

def _tape_stats():
    """Counts of the arena: live slots, slots handed out, capacity, free slots below size,
    the slots held by the orders and the steps held by the replays that roots cache, and
    the live built-in nodes whose _backward was assigned."""
    return {'live': tape.live, 'size': tape.size, 'capacity': tape.capacity,
            'free': tape.size - tape.live, 'cached': tape.cached, 'replayed': tape.replayed,
            'overridden': tape.overridden}


def _test_free_slots():
    """The free slots by the tree, lowest first, checked against the FREE flags, level by
    level (a bit set iff the word below it is not 0, none past the words below) and
    against free_top; reserve() relies on their number being size - live."""
    cdef node_t i
    cdef Py_ssize_t j, below
    cdef int k
    out = []
    for i in range(tape.size):
        bit = (tape.free_map[0][i >> 6] >> (i & 63)) & 1
        if bit != (tape.flags[i] & FREE != 0):
            raise AssertionError(f"slot {i}: free bit {bit}, FREE flag {tape.flags[i] & FREE}")
        if bit:
            out.append(i)
    for j in range(bit_words(tape.size), tape.free_map_words[0]):
        if tape.free_map[0][j] != 0:
            raise AssertionError(f"word {j} of the free slots, above size, is not 0")
    for k in range(1, FREE_LEVELS):
        below = tape.free_map_words[k - 1]
        for j in range(64 * tape.free_map_words[k]):
            bit = (tape.free_map[k][j >> 6] >> (j & 63)) & 1
            if bit != (j < below and tape.free_map[k - 1][j] != 0):
                raise AssertionError(f"level {k}, bit {j}: {bit}, but the word below "
                                     f"{'is past the level' if j >= below else 'says otherwise'}")
    if out and out[len(out) - 1] > tape.free_top:
        raise AssertionError(f"slot {out[len(out) - 1]} is free, above free_top {tape.free_top}")
    return out


def _test_slot(_Handle v):
    """The slot of v's node."""
    return check_slot(v)


def _test_fail_allocs(n):
    """Makes the allocation after the next n fail with MemoryError (-1 turns it off)."""
    global _allocs_until_failure
    _allocs_until_failure = n


def _test_descends(_Handle v):
    """Whether v's graph descends the slots (its backward is one pass down the arena)."""
    return bool(tape.flags[check_slot(v)] & DESCENDS)


def _test_hand_overs():
    """How many descending passes have handed the rest of their graph to Kahn's
    algorithm (their skip budget spent)."""
    return hand_overs


def _test_replay_current(_Handle v):
    """Whether v has a replay whose derivatives are current: its next backward() is the
    replay's sweep."""
    cdef node_t i = check_slot(v)
    return bool(tape.flags[i] & HAS_REPLAY) and (<_Replay>_replays[i]).stamp == tape.epoch


def _test_replay_saves(_Handle v):
    """Whether v's cached replay saves values and grads before recompute() overwrites
    them (one of its ops can raise), or None if v has no cached replay."""
    cdef node_t i = check_slot(v)
    return bool((<_Replay>_replays[i]).can_raise) if tape.flags[i] & HAS_REPLAY else None


def _test_replay_prefetch_steps():
    """The number of steps above which a replay's loops prefetch (PREFETCH_STEPS)."""
    return PREFETCH_STEPS


def _test_scratch_clear():
    """Whether the passes' scratch state is clear, as outside a pass: every parent count
    0 and nothing marked reached (the sentinels intact), every replay level 0."""
    return scratch_clear()


def _test_debug_build():
    """Whether this module was built with the debug checks (FASTGRAD_CYTHON_DEBUG=1)."""
    return bool(DEBUG)


def _test_invariant(bint ok):
    """Checks ok as the engine checks its invariants: in the debug build a False stops
    the process with a message; in a release build nothing happens."""
    invariant(ok, b"the invariant a test broke on purpose")
