"""`no_grad`: ops compute values without recording nodes, as torch.no_grad does.

    with fastgrad.no_grad():
        accuracy = sum((model(x).data > 0) == (y > 0) for x, y in data) / len(data)

Inside the block, an operator or method of a Value (`+ * ** relu tanh exp log ...`, a
Neuron's sum of products) returns a leaf holding the value: no children, nothing for
backward to follow, and no node kept alive for it. A node made explicitly with
`Value(data, children, op)` is kept as written. The mode is per thread and nests; it
also works as a decorator. Both engines follow it.
"""
from __future__ import annotations

import contextlib

from fastgrad._engine import ENGINES, engine


class no_grad(contextlib.ContextDecorator):
    """Context manager (or decorator) in which ops record no graph."""

    def __enter__(self) -> no_grad:
        for module in ENGINES:
            module._enter_no_grad()
        return self

    def __exit__(self, *exc: object) -> None:
        for module in ENGINES:
            module._exit_no_grad()


def is_grad_enabled() -> bool:
    """False inside a no_grad block (of the calling thread)."""
    return bool(engine._is_grad_enabled())
