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

A checkpoint is `pickle.dump((model, opt), f)`, or PyTorch's way, `opt.state_dict()`
beside the parameters' values, loaded with `load_state_dict` into an optimizer over the
same parameters, in the same order.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

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

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in PyTorch's layout, as plain numbers: 'state' maps each
        parameter's index (its place in the list the optimizer was made with) to its
        state, and 'param_groups' holds the group's hyperparameters, with 'params' the
        indices. The Values are not in it: a new dict each call."""
        group = self._group()
        return {'state': self._state(),
                'param_groups': [dict(group, params=list(range(len(self._listed))))]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Takes the state and hyperparameters of a state_dict() of the same kind of
        optimizer over as many parameters, in the same order. All of it is checked
        before anything changes: a ValueError or TypeError leaves the optimizer as it
        was."""
        group = self._group()
        if not isinstance(state_dict, Mapping) or set(state_dict) != {'state', 'param_groups'}:
            raise ValueError("a state dict has the keys 'state' and 'param_groups', as "
                             "state_dict() gives it")
        groups = state_dict['param_groups']
        if not isinstance(groups, (list, tuple)) or len(groups) != 1 or \
                not isinstance(groups[0], Mapping):
            raise ValueError("a state dict of fastgrad.optim has one parameter group")
        hyper = dict(groups[0])
        indices = list(hyper.pop('params', ()))
        n = len(self._listed)
        if indices != list(range(n)):
            raise ValueError(f"the state dict is for {len(indices)} parameters (indices "
                             f"0 to n - 1 in order); this optimizer has {n}")
        names = set(group) - {'params'}
        if set(hyper) != names:
            raise ValueError(f"the state dict's hyperparameters {sorted(hyper)} are not "
                             f"{type(self).__name__}'s {sorted(names)}")
        hyper = self._checked(**hyper)
        load = self._state_loader(state_dict['state'], n)
        load()
        group.update(hyper)

    # each optimizer's hyperparameters, validated (the constructor's checks) and normalised
    _checked: Callable[..., dict[str, Any]]

    def _state(self) -> dict[int, dict[str, Any]]:
        """Per-parameter state, by index (none unless the optimizer keeps some)."""
        return {}

    def _state_loader(self, state: Any, n: int) -> Callable[[], None]:
        """Checks a state dict's 'state' for n parameters; returns what loads it."""
        if not isinstance(state, Mapping) or state:
            raise ValueError(f"{type(self).__name__} keeps no state per parameter: the "
                             "state dict's 'state' should be empty")
        return lambda: None

    def __repr__(self) -> str:
        group = self.param_groups[0]
        settings = "".join(f", {k}={v!r}" for k, v in group.items() if k != 'params')
        return f"{type(self).__name__}({len(group['params'])} parameters{settings})"


class SGD(Optimizer):
    """p.data -= lr * p.grad for every parameter: micrograd's update."""

    def __init__(self, params: Iterable[Value], lr: float) -> None:
        super().__init__(params, self._checked(lr=lr))

    @staticmethod
    def _checked(lr: float) -> dict[str, Any]:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        return dict(lr=lr)

    def step(self) -> None:
        self._params.sgd(float(self._group()['lr']))


class Adam(Optimizer):
    """Adam (Kingma and Ba), with L2 weight decay added to the grad as PyTorch does."""

    def __init__(self, params: Iterable[Value], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, self._checked(lr=lr, betas=betas, eps=eps,
                                               weight_decay=weight_decay))
        self.steps = 0

    @staticmethod
    def _checked(lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float) -> dict[str, Any]:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if len(betas) != 2 or not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid beta parameters: {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        return dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def _state(self) -> dict[int, dict[str, Any]]:
        # PyTorch's names; none before the first step, as PyTorch's
        if self.steps == 0:
            return {}
        m, v = self._params.moments()
        return {k: {'step': self.steps, 'exp_avg': m[k], 'exp_avg_sq': v[k]}
                for k in range(len(m))}

    def _state_loader(self, state: Any, n: int) -> Callable[[], None]:
        if not isinstance(state, Mapping):
            raise ValueError("the state dict's 'state' maps parameter indices to states")
        if not state:                   # an Adam that had not stepped
            m = v = [0.0] * n
            step = 0
        else:
            if set(state) != set(range(n)):
                raise ValueError(f"the state dict's 'state' should have the indices 0 to "
                                 f"{n - 1}, one per parameter")
            entries = [state[k] for k in range(n)]
            keys = {'step', 'exp_avg', 'exp_avg_sq'}
            if not all(isinstance(e, Mapping) and set(e) == keys for e in entries):
                raise ValueError(f"each parameter's state has the keys {sorted(keys)}")
            steps = {e['step'] for e in entries}
            step = steps.pop()
            if steps or not _whole(step):
                raise ValueError("Adam steps its parameters together: each parameter's "
                                 "'step' should be the same whole number, from 1")
            m = [float(e['exp_avg']) for e in entries]
            v = [float(e['exp_avg_sq']) for e in entries]
            if any(x < 0.0 for x in v):   # (nan and inf are a diverged run's, kept)
                raise ValueError("a second moment ('exp_avg_sq') is negative")

        def load() -> None:
            self._params.set_moments(m, v)
            self.steps = int(step)
        return load

    def step(self) -> None:
        g = self._group()
        self.steps += 1
        self._params.adam(float(g['lr']), float(g['betas'][0]), float(g['betas'][1]),
                          float(g['eps']), float(g['weight_decay']), self.steps)


def _whole(x: Any) -> bool:
    """Whether x is a whole number from 1: an int, or a float such as PyTorch's 3.0."""
    return (isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 1 and
            float(x).is_integer())
