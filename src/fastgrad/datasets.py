"""Toy data for the demos, the tests and the benchmarks, without numpy or scikit-learn."""
import math
import random
from importlib import resources


def names() -> list[str]:
    """The 32,033 names microgpt trains on (makemore's names.txt; its provenance is in
    fastgrad/data/README.md), in file order."""
    text = resources.files("fastgrad").joinpath("data", "names.txt").read_text(encoding="ascii")
    return [line.strip() for line in text.strip().split("\n") if line.strip()]


def make_moons(n_samples: int = 100, noise: float = 0.1,
               seed: int = 0) -> tuple[list[tuple[float, float]], list[int]]:
    """Two interleaving half circles (scikit-learn's make_moons, drawn with `random`).

    Returns (X, y): a list of (x1, x2) tuples and a list of labels -1 and 1, as in
    micrograd's demo notebook. The same seed gives the same data on every platform.
    """
    rnd = random.Random(seed)
    n_out = n_samples // 2
    n_in = n_samples - n_out
    X: list[tuple[float, float]] = []
    y: list[int] = []
    for i in range(n_out):
        t = math.pi * i / (n_out - 1) if n_out > 1 else 0.0
        X.append((math.cos(t), math.sin(t)))
        y.append(-1)
    for i in range(n_in):
        t = math.pi * i / (n_in - 1) if n_in > 1 else 0.0
        X.append((1 - math.cos(t), 1 - math.sin(t) - 0.5))
        y.append(1)
    X = [(a + rnd.gauss(0, noise), b + rnd.gauss(0, noise)) for a, b in X]
    return X, y
