"""Optimizers with PyTorch's names and conventions, whose steps run as C loops over the
parameters' slots on the compiled engine (and as Python loops on the reference).

    opt = Adam(model.parameters(), lr=1e-2)
    for step in range(100):
        loss.recompute()            # or build the graph again
        opt.zero_grad()
        loss.backward()
        opt.step()
        opt.param_groups[0]['lr'] *= 0.99     # the learning-rate schedule hook

The update formulas are written out in `_PythonParams`, the reference kernel.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from fastgrad import reference
from fastgrad.engine import Value


class _PythonParams:
    """The optimizers' kernels on any Value class, in Python (the reference engine)."""

    def __init__(self, params: Iterable[Any]) -> None:
        self.values = list(params)
        self.m = [0.0] * len(self.values)
        self.v = [0.0] * len(self.values)

    def zero_grad(self) -> None:
        for p in self.values:
            p.grad = 0.0

    def sgd(self, lr: float) -> None:
        for p in self.values:
            p.data -= lr * p.grad

    def adam(self, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
             step: int) -> None:
        step_size = lr / (1.0 - beta1 ** step)
        correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
        for k, p in enumerate(self.values):
            g = p.grad + weight_decay * p.data
            self.m[k] = beta1 * self.m[k] + (1.0 - beta1) * g
            self.v[k] = beta2 * self.v[k] + (1.0 - beta2) * g * g
            p.data -= step_size * self.m[k] / (math.sqrt(self.v[k]) / correction2_sqrt + eps)


def _kernel(params: Iterable[Value]) -> Any:
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if all(type(p) is reference.Value for p in params):
        return _PythonParams(params)
    try:
        from fastgrad import _core
    except ImportError:         # a pure-Python install: only reference Values exist
        bad = next(p for p in params if type(p) is not reference.Value)
        raise TypeError(f"parameters must be Values, not {type(bad).__name__!r}") from None
    return _core._Params(params)


class Optimizer:
    """Base class: one parameter group, as `param_groups[0]`, holding the hyperparameters."""

    def __init__(self, params: Iterable[Value], defaults: dict[str, Any]) -> None:
        self._params = _kernel(params)
        self.param_groups: list[dict[str, Any]] = [
            dict(params=list(self._params.values), **defaults)]

    def zero_grad(self) -> None:
        self._params.zero_grad()


class SGD(Optimizer):
    """p.data -= lr * p.grad for every parameter: micrograd's update."""

    def __init__(self, params: Iterable[Value], lr: float) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        super().__init__(params, dict(lr=lr))

    def step(self) -> None:
        self._params.sgd(float(self.param_groups[0]['lr']))


class Adam(Optimizer):
    """Adam (Kingma and Ba), with L2 weight decay added to the grad as PyTorch does."""

    def __init__(self, params: Iterable[Value], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid beta parameters: {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))
        self.steps = 0

    def step(self) -> None:
        g = self.param_groups[0]
        self.steps += 1
        self._params.adam(float(g['lr']), float(g['betas'][0]), float(g['betas'][1]),
                          float(g['eps']), float(g['weight_decay']), self.steps)
