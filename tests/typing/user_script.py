"""A user's script on fastgrad's public API, for `mypy --strict` (tests/test_typing.py)."""
import random

import fastgrad
from fastgrad import demo
from fastgrad.datasets import make_moons
from fastgrad.engine import Value
from fastgrad.nn import MLP, Neuron
from fastgrad.optim import SGD, Adam

a = Value(2.0, label='a')
b = Value(-3.0)
c = (a * b + 1).tanh() ** 2 - b / a + 3 * a.exp() - a.relu()
c.backward()
grads: list[float] = [a.grad, b.grad]
a.data = a.data + 0.5
children: set[Value] = c._prev
op: str = c._op
custom = Value(a.data * 2, (a,), 'double')


def _backward() -> None:
    a.grad += 2 * custom.grad


custom._backward = _backward
custom.backward()

random.seed(0)
X, y = make_moons(20)
model = MLP(2, [8, 1])
first: tuple[float, float] = demo.step(model, X, y, 0)      # micrograd's own demo step
loss, scores = demo.build(model, X, y)                        # built once, replayed below
opt = SGD(model.parameters(), lr=0.1)
for step in range(3):
    loss.recompute()
    opt.zero_grad()
    loss.backward()
    opt.param_groups[0]['lr'] = 0.1 * (1 - step / 3)
    opt.step()
adam = Adam(Neuron(3).parameters(), lr=1e-2, betas=(0.9, 0.99))
adam.step()
engine: str = fastgrad.ENGINE
print(f"{loss.data:.4f}", engine, grads, len(children), op)

# beyond micrograd
from fastgrad import enable_grad, gradcheck, no_grad, set_grad_enabled
from fastgrad.functional import cross_entropy, linear, matrix, softmax
from fastgrad.viz import trace

z = a.log() + a.sigmoid() + a.sqrt() + abs(b) + a ** b + 2 ** a
probs: list[Value] = softmax([a, b, z])
ce: Value = cross_entropy([a, b, z], 1)
W = matrix([[a, b], [b, z]])
hidden: list[Value] = linear([a, 2.0], W)
with no_grad():
    frozen: Value = a * b
    with enable_grad():
        recorded: Value = a * b
with set_grad_enabled(False):
    frozen = a * b


@no_grad()
def evaluate(x: Value) -> float:
    return (x * 2.0).data


@no_grad
def evaluate_too(x: Value) -> float:
    return (x * 2.0).data


assert evaluate(a) == evaluate_too(a) == 2 * a.data and len(recorded._prev) == 2
ok: bool = gradcheck(lambda x, y: (x * y).tanh(), [0.3, 0.4])
nodes, edges = trace(ce)
print(len(probs), ce.data, frozen.data, ok, len(nodes), len(edges))
