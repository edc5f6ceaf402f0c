"""The op table: the one place an op is defined.

Every other part of fastgrad is keyed by these codes: ``_core.pxd`` mirrors the enum for
the C kernels and the reverse sweep, ``reference.py`` keys its backward rules by it, and
``tests/test_opcodes.py`` checks that all of them agree.
"""
from enum import IntEnum


class Op(IntEnum):
    """Op codes of tape nodes. Append only: a code never changes meaning."""
    LEAF = 0     # a constant or parameter: no children
    ADD = 1      # lhs + rhs
    MUL = 2      # lhs * rhs
    POW = 3      # lhs ** k, k a constant number
    RELU = 4     # max(lhs, 0), micrograd's spelling
    TANH = 5     # tanh(lhs)
    EXP = 6      # exp(lhs)
    CUSTOM = 7   # Value(data, children, op): any children, an optional Python _backward
    AFFINE = 8   # b + w0 * x0 + w1 * x1 + ...: a neuron's pre-activation in one node
    LOG = 9      # log(lhs), lhs > 0
    SIGMOID = 10 # 1 / (1 + exp(-lhs)), computed without overflow
    SQRT = 11    # sqrt(lhs), lhs >= 0
    ABS = 12     # |lhs|
    POWV = 13    # lhs ** rhs, both Values (a number base becomes a leaf), lhs > 0
    LOCAL = 14   # microgpt's Value(data, children, local_grads): any children, each with
                 # its local derivative given as a constant (also the fused helpers' nodes)
    COUNT = 15   # sentinel: the number of op codes


# how many children a node of each op has (None: any number)
ARITY = {
    Op.LEAF: 0,
    Op.ADD: 2,
    Op.MUL: 2,
    Op.POW: 1,
    Op.RELU: 1,
    Op.TANH: 1,
    Op.EXP: 1,
    Op.CUSTOM: None,
    Op.AFFINE: None,     # 1 + 2 * terms: b, w0, x0, w1, x1, ...
    Op.LOG: 1,
    Op.SIGMOID: 1,
    Op.SQRT: 1,
    Op.ABS: 1,
    Op.POWV: 2,
    Op.LOCAL: None,
}

# the `_op` string micrograd shows for a node ('**' is followed by the exponent, as in
# micrograd's f'**{k}', except for POWV, whose exponent is a child; a CUSTOM node shows
# whatever string it was made with)
SYMBOL = {
    Op.LEAF: '',
    Op.ADD: '+',
    Op.MUL: '*',
    Op.POW: '**',
    Op.RELU: 'ReLU',
    Op.TANH: 'tanh',
    Op.EXP: 'exp',
    Op.CUSTOM: '',
    Op.AFFINE: 'affine',
    Op.LOG: 'log',
    Op.SIGMOID: 'sigmoid',
    Op.SQRT: 'sqrt',
    Op.ABS: 'abs',
    Op.POWV: '**',
    Op.LOCAL: '',
}

# the local chain rule of each op, with g the node's grad: what is added into each child,
# always (local derivative) * g
DERIVATIVE = {
    Op.LEAF: 'nothing',
    Op.ADD: 'lhs.grad += g; rhs.grad += g',
    Op.MUL: 'lhs.grad += rhs.data * g; rhs.grad += lhs.data * g',
    Op.POW: 'lhs.grad += k * lhs.data ** (k - 1) * g',
    Op.RELU: 'lhs.grad += (out.data > 0) * g',
    Op.TANH: 'lhs.grad += (1 - out.data ** 2) * g',
    Op.EXP: 'lhs.grad += out.data * g',
    Op.CUSTOM: 'whatever its Python _backward does (nothing if it has none)',
    Op.AFFINE: 'b.grad += g; w_k.grad += x_k.data * g; x_k.grad += w_k.data * g',
    Op.LOG: 'lhs.grad += (1 / lhs.data) * g',
    Op.SIGMOID: 'lhs.grad += out.data * (1 - out.data) * g',
    Op.SQRT: 'lhs.grad += (1 / (2 * out.data)) * g',
    Op.ABS: 'lhs.grad += sign(lhs.data) * g (0 at 0, nan at nan)',
    Op.POWV: 'lhs.grad += rhs.data * lhs.data ** (rhs.data - 1) * g; '
             'rhs.grad += out.data * log(lhs.data) * g',
    Op.LOCAL: 'children[k].grad += local_grads[k] * g, local_grads fixed when it was made',
}


def pow_symbol(k):
    """The `_op` string of `x ** k`, exactly as micrograd writes it."""
    return f'**{k}'
