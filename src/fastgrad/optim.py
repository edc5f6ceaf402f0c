"""Optimizers with PyTorch's names and conventions, whose steps run as C loops over the
parameters' slots on the compiled engine (and as Python loops on the reference).

    opt = Adam(model.parameters(), lr=1e-2)
    for step in range(100):
        loss.recompute()            # or build the graph again
        opt.zero_grad()
        loss.backward()
        opt.step()
        opt.param_groups[0]['lr'] *= 0.99     # the learning-rate schedule hook

Each engine provides the kernel (`_Params`): the update formulas are written out in
`fastgrad.reference._Params`, which the compiled loops equal bit for bit. The kernel
keeps the parameters' slots, so `param_groups[0]['params']` is a tuple: the
hyperparameters may change between steps, the parameters may not.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

from fastgrad._engine import engine_of
from fastgrad.engine import Value


class Optimizer:
    """Base class: one parameter group, as `param_groups[0]`, holding the hyperparameters."""

    def __init__(self, params: Iterable[Value], defaults: dict[str, Any]) -> None:
        values = list(params)
        if not values:
            raise ValueError("optimizer got an empty parameter list")
        self._params = engine_of(values)._Params(values)
        repeats = len(values) - len({id(v) for v in values})
        if repeats:
            # (PyTorch warns too; its Adam would then step one state twice)
            warnings.warn(f"optimizer got a Value more than once ({repeats} repeated "
                          "listing(s)): each listing is stepped as a parameter of its own, "
                          "as a Python loop over the list would step it", stacklevel=3)
        self._listed = tuple(self._params.values)
        self.param_groups: list[dict[str, Any]] = [dict(params=self._listed, **defaults)]

    def _group(self) -> dict[str, Any]:
        """param_groups[0], once it is known to hold the parameters the kernel steps."""
        group = self.param_groups[0]
        if group['params'] is not self._listed:
            raise ValueError("param_groups[0]['params'] was replaced; an optimizer steps "
                             "the parameters it was made with: make a new one")
        return group

    def zero_grad(self) -> None:
        self._group()
        self._params.zero_grad()

    def __repr__(self) -> str:
        group = self.param_groups[0]
        settings = "".join(f", {k}={v!r}" for k, v in group.items() if k != 'params')
        return f"{type(self).__name__}({len(group['params'])} parameters{settings})"


class SGD(Optimizer):
    """p.data -= lr * p.grad for every parameter: micrograd's update."""

    def __init__(self, params: Iterable[Value], lr: float) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        super().__init__(params, dict(lr=lr))

    def step(self) -> None:
        self._params.sgd(float(self._group()['lr']))


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
        g = self._group()
        self.steps += 1
        self._params.adam(float(g['lr']), float(g['betas'][0]), float(g['betas'][1]),
                          float(g['eps']), float(g['weight_decay']), self.steps)
