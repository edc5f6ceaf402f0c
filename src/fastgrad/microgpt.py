"""microgpt's engine API on fastgrad's arena: `from fastgrad.microgpt import Value`.

Karpathy's microgpt (2026) defines its own scalar Value: `Value(data, children=(),
local_grads=())`, with `_children` and `_local_grads` tuples, where each op returns the
local derivative of its result with respect to each child, and `backward()` multiplies
them along a topological order. This Value keeps that API for code written against it:

    from fastgrad.microgpt import Value

    x = Value(2.0)
    y = Value(x.data ** 3, (x,), (3 * x.data ** 2,))   # a custom op, microgpt's way
    (y * x + 1).backward()

A node made with local gradients holds them as constants in the arena (op LOCAL), and the
C sweep applies them itself: no Python runs per node. The operators (`+ * ** / -`, `exp`,
`log`, `relu`, and fastgrad's other ops) build the same nodes as fastgrad.engine's; their
`_local_grads` are the op's derivatives at the current values, which are microgpt's
constants unless a value is assigned between building a graph and its backward().
Values of this class and of fastgrad.engine.Value do not mix in one graph.
"""
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastgrad._core import GptValue as Value
else:
    from fastgrad._engine import GptValue as Value

__all__ = ["Value"]
