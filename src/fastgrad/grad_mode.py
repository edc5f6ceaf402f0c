"""Grad mode, as torch has it: `no_grad`, `enable_grad`, `set_grad_enabled`.

    with fastgrad.no_grad():
        accuracy = sum((model(x).data > 0) == (y > 0) for x, y in data) / len(data)

While grad mode is off, an operator or method of a Value (`+ * ** relu tanh exp log
...`, a Neuron's sum of products, a fused layer) returns a leaf holding the value: no
children, nothing for backward to follow, and no node kept alive for it. A node made
explicitly with `Value(data, children, op)` is kept as written. The mode is per thread;
both engines follow it.

Each of the three is a context manager that puts back, on leaving, the mode it found on
entering, so they nest in any order (`enable_grad` inside `no_grad` records again).
`no_grad` and `enable_grad` also work as decorators (`@no_grad()` or `@no_grad`), of a
generator function too: as with torch, each step of the generator runs inside the block
and the caller's code between its items does not. `set_grad_enabled(mode)` sets the
mode when it is called, so it also works as a plain call
(`fastgrad.set_grad_enabled(False)` turns recording off until it is turned on again),
and as a context manager it restores the earlier mode on leaving.
"""
from __future__ import annotations

import contextlib
import functools
from threading import get_ident
from typing import TYPE_CHECKING, Any, Callable, Generator, TypeVar, cast, overload

from fastgrad._engine import ENGINES, engine

_F = TypeVar("_F", bound=Callable[..., Any])
if TYPE_CHECKING:
    # (for the type checker only: a TypeVar bound to a class's name compiles that name
    # the first time, which costs ~0.7 ms of fastgrad's import)
    _B = TypeVar("_B", bound="_Block")


def is_grad_enabled() -> bool:
    """False while the calling thread's grad mode is off (inside a no_grad block)."""
    return bool(engine._is_grad_enabled())


def _set_mode(mode: bool) -> bool:
    # every engine whose Values this process can make follows the one mode (so each gives
    # back the same earlier one)
    was = True
    for module in ENGINES:
        was = module._set_grad_enabled(mode)
    return bool(was)


class _Block:
    """A block run in grad mode `_MODE`; the mode found on entering is put back on leaving.
    (Each thread keeps its own stack of those, keyed by its ident, so one instance may be
    entered again, nested or from several threads: a decorator's is, at every call.) As a
    decorator it may also go without parentheses, `@no_grad`, as torch's may."""
    _MODE: bool
    _outer: dict[int, list[bool]]

    @overload
    def __new__(cls: type[_B], func: None = None) -> _B: ...
    @overload
    def __new__(cls, func: _F) -> _F: ...  # type: ignore[misc]

    def __new__(cls, func: Any = None) -> Any:
        if func is not None:
            if not callable(func):
                raise TypeError(f"{cls.__name__}() takes a function to decorate or nothing, "
                                f"not {type(func).__name__!r}")
            return cls()(func)
        block = super().__new__(cls)
        block._outer = {}
        return block

    def __enter__(self) -> _Block:
        self._outer.setdefault(get_ident(), []).append(_set_mode(self._MODE))
        return self

    def __exit__(self, *exc: object) -> None:
        thread = get_ident()
        stack = self._outer[thread]
        mode = stack.pop()
        if not stack:
            del self._outer[thread]
        _set_mode(mode)

    def __call__(self, func: _F) -> _F:
        return cast(_F, _decorate(func, lambda: self))


class no_grad(_Block):
    """Context manager (or decorator) in which ops record no graph."""
    _MODE = False


class enable_grad(_Block):
    """Context manager (or decorator) in which ops record graphs, inside no_grad too."""
    _MODE = True


class set_grad_enabled:
    """Turns grad mode on (True) or off (False) for the calling thread, at once. As a
    context manager, the mode from before the call is put back on leaving; as a
    decorator, the mode is set for each call only."""

    def __init__(self, mode: bool) -> None:
        if not isinstance(mode, bool):
            raise TypeError(f"set_grad_enabled takes True or False, not {type(mode).__name__!r}")
        self._mode = mode
        self._before = _set_mode(mode)

    def __enter__(self) -> set_grad_enabled:
        return self

    def __exit__(self, *exc: object) -> None:
        _set_mode(self._before)

    def __call__(self, func: _F) -> _F:
        _set_mode(self._before)         # (decorating sets no mode: each call does)
        return cast(_F, _decorate(func, lambda: set_grad_enabled(self._mode)))


def _decorate(func: Callable[..., Any],
              block: Callable[[], contextlib.AbstractContextManager[Any]]) -> Callable[..., Any]:
    """func, each call of it run inside a fresh `with block():`. A generator function's
    call only makes the generator (its body runs later, a step at a time), so there each
    step is wrapped rather than the call."""
    import inspect                      # (here: it is a tenth of fastgrad's import time)
    if inspect.isgeneratorfunction(func):
        @functools.wraps(func)
        def steps_in_block(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            return (yield from _each_step_in(block, func(*args, **kwargs)))
        return steps_in_block

    @functools.wraps(func)
    def in_block(*args: Any, **kwargs: Any) -> Any:
        with block():
            return func(*args, **kwargs)
    return in_block


def _each_step_in(block: Callable[[], contextlib.AbstractContextManager[Any]],
                  gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """gen's items, with each of its steps (the first, every send, throw and the close)
    run inside a `with block():`, and the consumer's code between them outside it."""
    try:
        with block():
            item = next(gen)
        while True:
            try:
                sent = yield item
            except GeneratorExit:
                with block():
                    gen.close()
                raise
            except BaseException as error:
                with block():
                    item = gen.throw(error)
            else:
                with block():
                    item = gen.send(sent)
    except StopIteration as end:
        return end.value
