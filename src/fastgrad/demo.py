"""micrograd's moons demo on fastgrad: `python -m fastgrad.demo` (or `make demo`).

Trains micrograd's MLP(2, [16, 16, 1]) on 100 two-moons points with its SVM loss, L2
regularisation and learning-rate schedule, showing loss and accuracy in a progress bar,
then writes a PNG of the decision boundary and the loss curve and prints where. The graph
is built once and replayed each step (recompute, backward, SGD step: `train`), as in
examples/moons_replay.py. `step` is micrograd's own step, the graph rebuilt each time: the
one copy of it that the tests, the benchmarks and the typing example use. micrograd's demo reaches 100% training accuracy; so must this.

Needs matplotlib for the picture and uses tqdm for the progress bar when installed
(`pip install fastgrad[demo]`).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Any, Callable, Sequence

from fastgrad._cli import progress, run
from fastgrad.datasets import make_moons
from fastgrad.engine import Value
from fastgrad.grad_mode import no_grad
from fastgrad.nn import MLP
from fastgrad.optim import SGD


def build(model: Any, X: Sequence[Sequence[float]], y: Sequence[int],
          alpha: float = 1e-4, Value: Any = Value) -> tuple[Value, list[Value]]:
    """micrograd's loss: SVM max-margin over the batch plus L2, and the scores. Value is
    the class the inputs are made of (micrograd's own works too, and then so are the
    results)."""
    inputs = [list(map(Value, xrow)) for xrow in X]
    scores = list(map(model, inputs))
    losses = [(1 + -yi * scorei).relu() for yi, scorei in zip(y, scores)]
    data_loss = sum(losses) * (1.0 / len(losses))
    reg_loss = alpha * sum((p * p for p in model.parameters()))
    return data_loss + reg_loss, scores


def accuracy(y: Sequence[int], scores: Sequence[Any]) -> float:
    """The fraction of points whose score has the label's sign."""
    return sum((yi > 0) == (s.data > 0) for yi, s in zip(y, scores)) / len(y)


def step(model: Any, X: Sequence[Sequence[float]], y: Sequence[int], k: int,
         alpha: float = 1e-4, Value: Any = Value) -> tuple[float, float]:
    """One step of micrograd's demo notebook, its way: the loss graph built anew,
    zero_grad, backward, then SGD at the demo's learning rate 1 - 0.9 k / 100. Returns
    (loss, accuracy of the scores it was computed from). Works on any engine's model and
    Value class, micrograd's own included."""
    total_loss, scores = build(model, X, y, alpha, Value)
    model.zero_grad()
    total_loss.backward()
    learning_rate = 1.0 - 0.9 * k / 100
    for p in model.parameters():
        p.data -= learning_rate * p.grad
    return total_loss.data, accuracy(y, scores)


def train(steps: int = 100, seed: int = 1337,
          on_step: Callable[[int, float, float], None] | None = None,
          ) -> tuple[MLP, list[tuple[float, float]]]:
    """Trains the demo's model; returns it and [(loss, accuracy)] per step (accuracy of
    the scores the step's loss was computed from, as micrograd's demo prints them)."""
    X, y = make_moons(n_samples=100, noise=0.1, seed=seed)
    random.seed(seed)
    model = MLP(2, [16, 16, 1])
    total_loss, scores = build(model, X, y)          # the graph, built once
    opt = SGD(model.parameters(), lr=1.0)
    curve = []
    for k in range(steps):
        total_loss.recompute()                       # forward again, from the new weights
        correct = accuracy(y, scores)
        opt.zero_grad()
        total_loss.backward()
        opt.param_groups[0]['lr'] = 1.0 - 0.9 * k / 100
        opt.step()
        curve.append((total_loss.data, correct))
        if on_step is not None:
            on_step(k, total_loss.data, correct)
    return model, curve


def draw(model: MLP, curve: list[tuple[float, float]], path: str, seed: int = 1337) -> None:
    """The decision boundary over the data (left) and the loss curve (right), as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    X, y = make_moons(n_samples=100, noise=0.1, seed=seed)
    n = 60
    xs = [-1.8 + 4.3 * i / (n - 1) for i in range(n)]
    ys = [-1.3 + 2.9 * j / (n - 1) for j in range(n)]
    with no_grad():                                  # evaluation only: no graph
        z = [[float(model([Value(a), Value(b)]).data > 0) for a in xs] for b in ys]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.contourf(xs, ys, z, levels=[-0.5, 0.5, 1.5], colors=["#c6dbef", "#f4c7c3"], alpha=0.8)
    left.scatter([p[0] for p in X], [p[1] for p in X], c=y, s=22, cmap="coolwarm",
                 edgecolors="k", linewidths=0.4)
    left.set_title(f"decision boundary, training accuracy {curve[-1][1]:.0%}")
    right.plot([loss for loss, _ in curve])
    right.set_xlabel("step")
    right.set_ylabel("loss")
    right.set_yscale("log")
    right.set_title("loss (SVM max-margin + 1e-4 L2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastgrad.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out", default="demo-output", help="directory for the PNG")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    show, close = progress(args.steps)

    def on_step(k: int, loss: float, accuracy: float) -> None:
        show(k, loss=f"{loss:.4f}", accuracy=f"{accuracy:.0%}")
    t0 = time.perf_counter()
    model, curve = train(args.steps, args.seed, on_step)
    close()
    elapsed = time.perf_counter() - t0
    loss, accuracy = curve[-1]
    print(f"{args.steps} steps in {elapsed:.2f} s: loss {loss:.4f}, training accuracy {accuracy:.0%}")
    try:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.abspath(os.path.join(args.out, "moons.png"))
        draw(model, curve, path, args.seed)
    except ImportError:
        print("no picture: matplotlib is not installed (pip install fastgrad[demo])", file=sys.stderr)
        return 0
    print(f"wrote {path} (decision boundary and loss curve)")
    return 0


if __name__ == "__main__":
    run(main)
