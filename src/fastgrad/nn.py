"""Drop-in for micrograd.nn: the same modules, reprs, parameter order and random draws.

The modules make their parameters with the Value class of the engine in use (the class
attribute `Value`); `using(V)` gives the same modules on another engine's class, e.g.
`using(fastgrad.reference.Value).MLP(2, [16, 1])`.
"""
from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any, Sequence

from fastgrad.engine import Value


class Module:
    """Base class: a bag of parameters."""
    Value: Any = Value          # the class parameters are made of

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = 0

    def parameters(self) -> list[Value]:
        return []


class Neuron(Module):
    """act(w . x + b), with w drawn from uniform(-1, 1) and b = 0.

    fused=True makes w . x + b one 'affine' node (children b, w and x) instead of
    micrograd's chain of '*' and '+' nodes: the same values and grads, a smaller graph."""

    def __init__(self, nin: int, nonlin: bool = True, fused: bool = False) -> None:
        self.w = [self.Value(random.uniform(-1, 1)) for _ in range(nin)]
        self.b = self.Value(0)
        self.nonlin = nonlin
        self.fused = fused

    def __call__(self, x: Sequence[Value | float]) -> Value:
        # micrograd's sum((wi*xi for wi, xi in zip(self.w, x)), self.b): the same nodes,
        # b + w0*x0 + w1*x1 + ..., made by the engine in one call (or one fused node)
        if self.fused:
            act = self.Value._affine(self.b, self.w, x)
        else:
            act = self.Value._sum_of_products(self.b, self.w, x)
        return act.relu() if self.nonlin else act

    def parameters(self) -> list[Value]:
        return self.w + [self.b]

    def __repr__(self) -> str:
        return f"{'ReLU' if self.nonlin else 'Linear'}Neuron({len(self.w)})"


class Layer(Module):
    """nout neurons reading the same inputs; one output is returned bare, not in a list."""

    Neuron = Neuron

    def __init__(self, nin: int, nout: int, **kwargs: Any) -> None:
        self.neurons = [self.Neuron(nin, **kwargs) for _ in range(nout)]

    def __call__(self, x: Sequence[Value | float]) -> Any:
        # a Value, or a list of Values (typed Any, as micrograd's callers use either)
        out = [n(x) for n in self.neurons]
        return out[0] if len(out) == 1 else out

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self) -> str:
        return f"Layer of [{', '.join(str(n) for n in self.neurons)}]"


class MLP(Module):
    """Layers of sizes nin -> nouts[0] -> ... -> nouts[-1]; the last one is linear.
    fused=True gives every neuron one 'affine' node (see Neuron)."""

    Layer = Layer

    def __init__(self, nin: int, nouts: list[int], fused: bool = False) -> None:
        sz = [nin] + nouts
        self.layers = [self.Layer(sz[i], sz[i + 1], nonlin=i != len(nouts) - 1, fused=fused)
                       for i in range(len(nouts))]

    def __call__(self, x: Sequence[Value | float]) -> Any:
        for layer in self.layers:
            x = layer(x)
        return x

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        return f"MLP of [{', '.join(str(layer) for layer in self.layers)}]"


def using(value_class: Any) -> SimpleNamespace:
    """Module, Neuron, Layer and MLP making their parameters with value_class."""
    on = {"Value": value_class}
    neuron = type("Neuron", (Neuron,), on)
    layer = type("Layer", (Layer,), dict(on, Neuron=neuron))
    mlp = type("MLP", (MLP,), dict(on, Layer=layer))
    return SimpleNamespace(Module=type("Module", (Module,), on), Neuron=neuron, Layer=layer,
                           MLP=mlp)
