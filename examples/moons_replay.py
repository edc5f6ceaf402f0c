"""micrograd's moons demo, written the fast way: build the graph once, then per step
recompute() it from the new weights, backward() and step() the optimizer in C.

The code is fastgrad.demo.build and fastgrad.demo.train (src/fastgrad/demo.py): same
model, same data, same loss and learning-rate schedule as micrograd's notebook, and the
same loss curve (tests/test_replay.py checks it against micrograd's). This prints the
curve the way micrograd's notebook does; `python -m fastgrad.demo` also draws it.
Run: python examples/moons_replay.py
"""
import time

from fastgrad.demo import train

if __name__ == "__main__":
    t0 = time.perf_counter()
    _, curve = train()
    elapsed = time.perf_counter() - t0
    for k, (loss, acc) in enumerate(curve):
        if k % 10 == 0 or k == len(curve) - 1:
            print(f"step {k} loss {loss}, accuracy {acc * 100}%")
    print(f"{len(curve)} steps in {elapsed:.2f} s")
