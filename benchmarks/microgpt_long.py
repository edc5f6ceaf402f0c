"""The fused GPT's 1,000-step run against the pure-Python script's, measured once (too
slow for make test: the pure-Python run takes minutes). Prints where both runs end: the
mean loss of their last 100 steps, the largest relative difference over the first 50
steps, the RSS of the fused run at steps 100 and 1,000, and the samples of both.

    .venv/bin/python benchmarks/microgpt_long.py [steps]
"""
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpt_runs import load_script  # noqa: E402

from fastgrad.gpt import GPT  # noqa: E402


def rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    out = {}
    gpt = GPT()
    t0 = time.perf_counter()
    fused, rss = [], {}
    for k in range(steps):
        fused.append(gpt.train_step(k, steps))
        if k + 1 in (100, steps):
            rss[k + 1] = rss_mb()
    out["fused_seconds"] = time.perf_counter() - t0
    random.seed(1)
    out["fused_samples"] = [gpt.sample() for _ in range(20)]
    script = load_script()
    t0 = time.perf_counter()
    plain = list(script.training(steps))
    out["python_seconds"] = time.perf_counter() - t0
    random.seed(1)
    out["python_samples"] = [script.sample() for _ in range(20)]
    out["fused_last100"] = sum(fused[-100:]) / 100
    out["python_last100"] = sum(plain[-100:]) / 100
    out["first50_max_rel_diff"] = max(abs(a - b) / abs(b) for a, b in zip(fused[:50], plain[:50]))
    out["fused_rss_mb"] = rss
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
