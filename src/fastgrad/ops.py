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
    COUNT = 9    # sentinel: the number of op codes


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
}

# the `_op` string micrograd shows for a node ('**' is followed by the exponent, as in
# micrograd's f'**{k}'; a CUSTOM node shows whatever string it was made with)
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
}

# the local chain rule of each op, with g the node's grad: what is added into each child
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
}


def pow_symbol(k):
    """The `_op` string of `x ** k`, exactly as micrograd writes it."""
    return f'**{k}'
