# The optimizers' loops over parameter slots (fastgrad.optim). (Part of _core.pyx.)

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
            if not isinstance(p, _Handle):
                raise TypeError(f"parameters must be Values, not {type(p).__name__!r}")
            check_slot(<_Handle>p)
        safe_realloc(<void**>&self.slot, self.n + 1, sizeof(node_t))
        safe_realloc(<void**>&self.m, self.n + 1, sizeof(real_t))
        safe_realloc(<void**>&self.v, self.n + 1, sizeof(real_t))
        for k in range(self.n):
            self.slot[k] = (<_Handle>self.values[k]).slot
            self.m[k] = self.v[k] = 0.0

    def __dealloc__(self):
        PyMem_Free(self.slot)
        PyMem_Free(self.m)
        PyMem_Free(self.v)

    def zero_grad(self):
        cdef Py_ssize_t k
        for k in range(self.n):
            tape.grad[self.slot[k]] = 0.0

    def sgd(self, real_t lr):
        # p.data -= lr * p.grad, micrograd's update
        cdef Py_ssize_t k
        cdef node_t s
        for k in range(self.n):
            s = self.slot[k]
            tape.value[s] -= lr * tape.grad[s]
        tape.epoch += 1

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
            g = tape.grad[s] + weight_decay * tape.value[s]
            self.m[k] = beta1 * self.m[k] + (1.0 - beta1) * g
            self.v[k] = beta2 * self.v[k] + (1.0 - beta2) * g * g
            tape.value[s] -= step_size * self.m[k] / (sqrt(self.v[k]) / correction2_sqrt + eps)
        tape.epoch += 1
