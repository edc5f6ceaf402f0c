"""micrograd's moons demo, written the fast way: build the graph once, then per step
recompute() it from the new weights, backward() and step() the optimizer in C.

Same model, same data, same loss and learning-rate schedule as micrograd's notebook,
and the same loss curve (tests/test_replay.py checks it against micrograd's).
Run: python examples/moons_replay.py
"""
import random
import time

from fastgrad.datasets import make_moons
from fastgrad.demo import build          # micrograd's loss graph: SVM max-margin + L2
from fastgrad.nn import MLP
from fastgrad.optim import SGD


def train(steps=100, seed=1337):
    """Returns [(loss, accuracy)] per step, as micrograd's demo loop prints them."""
    X, y = make_moons(n_samples=100, noise=0.1, seed=seed)
    random.seed(seed)
    model = MLP(2, [16, 16, 1])
    total_loss, scores = build(model, X, y)          # the graph, built once
    opt = SGD(model.parameters(), lr=1.0)
    curve = []
    for k in range(steps):
        total_loss.recompute()                       # forward again, from the new weights
        accuracy = sum((yi > 0) == (s.data > 0) for yi, s in zip(y, scores)) / len(y)
        opt.zero_grad()
        total_loss.backward()
        opt.param_groups[0]['lr'] = 1.0 - 0.9 * k / 100
        opt.step()
        curve.append((total_loss.data, accuracy))
    return curve


if __name__ == "__main__":
    t0 = time.perf_counter()
    curve = train()
    elapsed = time.perf_counter() - t0
    for k, (loss, acc) in enumerate(curve):
        if k % 10 == 0 or k == len(curve) - 1:
            print(f"step {k} loss {loss}, accuracy {acc * 100}%")
    print(f"{len(curve)} steps in {elapsed:.2f} s")
