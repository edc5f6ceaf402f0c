"""`no_grad`: ops compute values without recording nodes, as torch.no_grad does.

    with fastgrad.no_grad():
        accuracy = sum((model(x).data > 0) == (y > 0) for x, y in data) / len(data)

Inside the block, an operator or method of a Value (`+ * ** relu tanh exp log ...`, a
Neuron's sum of products) returns a leaf holding the value: no children, nothing for
backward to follow, and no node kept alive for it. A node made explicitly with
`Value(data, children, op)` is kept as written. The mode is per thread and nests; it
also works as a decorator, of a generator function too: as with torch.no_grad, each step
of the generator runs inside the block and the caller's code between its items does
not. Both engines follow it.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Generator

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

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        # (a generator function's call only makes the generator: its body runs later, a
        # step at a time, so each step is wrapped rather than the call)
        import inspect                  # (here: it is a tenth of fastgrad's import time)
        if not inspect.isgeneratorfunction(func):
            return super().__call__(func)

        @functools.wraps(func)
        def steps_without_grad(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            return (yield from _each_step_in_block(func(*args, **kwargs)))
        return steps_without_grad


def _each_step_in_block(gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """gen's items, with each of its steps (the first, every send, throw and the close)
    run inside a no_grad block, and the consumer's code between them outside it."""
    try:
        with no_grad():
            item = next(gen)
        while True:
            try:
                sent = yield item
            except GeneratorExit:
                with no_grad():
                    gen.close()
                raise
            except BaseException as error:
                with no_grad():
                    item = gen.throw(error)
            else:
                with no_grad():
                    item = gen.send(sent)
    except StopIteration as end:
        return end.value


def is_grad_enabled() -> bool:
    """False inside a no_grad block (of the calling thread)."""
    return bool(engine._is_grad_enabled())
