# The optimizers' loops over parameter slots (fastgrad.optim). (Part of _core.pyx.)

# (pointers to arrays that do not overlap, which lets the compiler vectorize the loops
# over runs of slots below)
cdef extern from *:
    ctypedef real_t* unshared_reals "double* __restrict__"


cdef class _Params:
    """The slots of a list of Values, for optimizers' C loops (fastgrad.optim). Holds
    the Values, so that their slots stay theirs, and per-parameter optimizer state.

    A Value's slot never changes, so the list's runs of consecutive slots (parameters
    made one after another usually fill one) are found once: a loop over a run reads
    and writes the tape's arrays in order, which the compiler vectorizes."""
    cdef readonly list values
    cdef node_t* slot
    cdef real_t* m          # Adam: first moment of each parameter's grad
    cdef real_t* v          # Adam: second moment
    cdef Py_ssize_t n
    cdef Py_ssize_t* run    # run r is parameters run[r] .. run[r + 1] - 1, whose slots
    cdef Py_ssize_t runs    # are slot[run[r]], slot[run[r]] + 1, ...

    def __cinit__(self, params):
        cdef Py_ssize_t k
        self.values = list(params)
        self.n = len(self.values)
        for p in self.values:
            if not isinstance(p, _Handle):
                raise TypeError(f"parameters must be Values, not {type(p).__name__!r}")
            check_slot(<_Handle>p)
        safe_realloc(<void**>&self.slot, self.n + 1, sizeof(node_t))
        safe_realloc(<void**>&self.m, self.n + 1, sizeof(real_t))
        safe_realloc(<void**>&self.v, self.n + 1, sizeof(real_t))
        safe_realloc(<void**>&self.run, self.n + 1, sizeof(Py_ssize_t))
        self.runs = 0
        for k in range(self.n):
            self.slot[k] = (<_Handle>self.values[k]).slot
            self.m[k] = self.v[k] = 0.0
            if k == 0 or self.slot[k] != self.slot[k - 1] + 1:
                self.run[self.runs] = k
                self.runs += 1
        self.run[self.runs] = self.n

    def __dealloc__(self):
        PyMem_Free(self.slot)
        PyMem_Free(self.m)
        PyMem_Free(self.v)
        PyMem_Free(self.run)

    def zero_grad(self):
        cdef Py_ssize_t r, k0
        for r in range(self.runs):
            k0 = self.run[r]
            memset(&tape.grad[self.slot[k0]], 0, (self.run[r + 1] - k0) * sizeof(real_t))

    def sgd(self, real_t lr):
        # p.data -= lr * p.grad, micrograd's update
        cdef Py_ssize_t r, k0
        cdef node_t s
        for r in range(self.runs):
            k0 = self.run[r]
            s = self.slot[k0]
            sgd_run(&tape.value[s], &tape.grad[s], self.run[r + 1] - k0, lr)
        tape.epoch += 1

    def adam(self, real_t lr, real_t beta1, real_t beta2, real_t eps, real_t weight_decay,
             long step):
        # fastgrad.optim.Adam's update; bias corrections 1 - beta ** step, PyTorch's form
        cdef Py_ssize_t r, k0
        cdef node_t s
        cdef real_t step_size = lr / (1.0 - pow(beta1, step))
        cdef real_t correction2_sqrt = sqrt(1.0 - pow(beta2, step))
        for r in range(self.runs):
            k0 = self.run[r]
            s = self.slot[k0]
            adam_run(&tape.value[s], &tape.grad[s], &self.m[k0], &self.v[k0],
                     self.run[r + 1] - k0, step_size, correction2_sqrt, beta1, beta2, eps,
                     weight_decay)
        tape.epoch += 1

    def moments(self):
        """Adam's moments, (first, second), a list of floats each, one per parameter."""
        return [self.m[k] for k in range(self.n)], [self.v[k] for k in range(self.n)]

    def set_moments(self, m, v):
        """Sets Adam's moments from two sequences of numbers, one per parameter; a
        ValueError or TypeError leaves them as they were."""
        m, v = [float(x) for x in m], [float(x) for x in v]
        if len(m) != self.n or len(v) != self.n:
            raise ValueError(f"moments for {len(m)} and {len(v)} parameters, not {self.n}")
        cdef Py_ssize_t k
        for k in range(self.n):
            self.m[k], self.v[k] = m[k], v[k]

    def __reduce__(self):
        # pickling and copying: the same Values (a pickler's memo keeps them the ones the
        # model holds), each with its Adam moments
        return (_restore_params, (self.values,) + self.moments())


def _restore_params(values, m, v):
    """Unpickles a _Params: its Values and each one's moments."""
    p = _Params(values)
    p.set_moments(m, v)
    return p


cdef void sgd_run(unshared_reals value, unshared_reals grad, Py_ssize_t n,
                  real_t lr) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        value[k] -= lr * grad[k]


cdef void adam_run(unshared_reals value, unshared_reals grad, unshared_reals m,
                   unshared_reals v, Py_ssize_t n, real_t step_size, real_t correction2_sqrt,
                   real_t beta1, real_t beta2, real_t eps, real_t weight_decay) noexcept nogil:
    # Adam over n parameters in consecutive slots (value and grad from the first's),
    # element by element the same operations as one at a time
    cdef Py_ssize_t k
    cdef real_t g
    for k in range(n):
        g = grad[k] + weight_decay * value[k]
        m[k] = beta1 * m[k] + (1.0 - beta1) * g
        v[k] = beta2 * v[k] + (1.0 - beta2) * g * g
        value[k] -= step_size * m[k] / (sqrt(v[k]) / correction2_sqrt + eps)
