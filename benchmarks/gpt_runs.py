"""The microgpt workload's engines, each a way to run microgpt's training step.

`load_script(import_line)` loads examples/microgpt.py as a module: as written (its own
pure-Python engine, written the way microgpt writes its own: the baseline), or with its
engine block replaced by one import line, the only change a user makes. `DROP_INS` are
the lines the benchmarks and tests use. The fused model is fastgrad.gpt.GPT.
"""
import ast
import gc
import os
import pathlib
import random
import re
import statistics
import subprocess
import sys
import time
import timeit
import types

import fastgrad

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "microgpt.py"
ENGINE_BLOCK = re.compile(r"^# --- engine: begin ---\n.*?^# --- engine: end ---\n", re.S | re.M)

# the import a user puts in place of the script's engine block, per benchmark engine
DROP_INS = {
    "microgpt-style": None,                                 # the script as written
    "reference": "from fastgrad.reference import Value",
    "fastgrad": "from fastgrad._core import Value",       # = fastgrad.engine on the compiled engine
    "fastgrad-microgpt": "from fastgrad._core import GptValue as Value",   # = fastgrad.microgpt
}


def load_script(import_line=None):
    """examples/microgpt.py as a fresh module (its data shuffled and its weights drawn
    from seed 42 again), with its engine block replaced by import_line if given."""
    text = SCRIPT.read_text()
    if import_line is not None:
        text, count = ENGINE_BLOCK.subn(import_line + "\n", text)
        assert count == 1, "examples/microgpt.py must have one engine block"
    module = types.ModuleType("microgpt_script")
    module.__file__ = str(SCRIPT)
    exec(compile(text, str(SCRIPT), "exec"), module.__dict__)
    return module


def forward(script, doc):
    """The loss of one name, built as the script's loop builds it (its forward only)."""
    tokens = [script.BOS] + [script.chars.index(c) for c in doc] + [script.BOS]
    keys, values = [[] for _ in range(script.n_layer)], [[] for _ in range(script.n_layer)]
    losses = []
    for pos in range(min(script.block_size, len(tokens) - 1)):
        probs = script.softmax(script.gpt(tokens[pos], pos, keys, values))
        losses.append(-probs[tokens[pos + 1]].log())
    return (1 / len(losses)) * sum(losses)


# ------------------------------------------------------------------------ the workload


# engine -> (what it is, rounds). A round loads a fresh, identically seeded model, runs
# step 0 untimed (warm-up), then times steps 1 .. STEPS: the same names on every engine,
# so the ratios compare like with like (a step's cost grows with its name's length).
ENGINES = {
    "microgpt-style": ("pure Python, a Value written the microgpt way (examples/microgpt.py)", 3),
    "reference": ("fastgrad.reference.Value, the script unchanged but for the import", 2),
    "fastgrad": ("fastgrad.engine.Value (drop-in: the script unchanged but for the import)", 7),
    "fastgrad-microgpt": ("fastgrad.microgpt.Value (drop-in)", 7),
    "fastgrad-fused": ("fastgrad.gpt: fastgrad.functional layers + fastgrad.optim.Adam", 21),
    "torch": ("torch, batched per position (float64, one thread)", 7),
}
STEPS = 8
NUM_STEPS = 1000            # the lr schedule's length
SAMPLES = 11                # names sampled (after the timed steps) for the inference column


def runner(name):
    """(losses, sample() -> str or None) for one engine, freshly seeded: next(losses)
    runs the next training step and gives its loss. The script's engines run its own
    loop (microgpt's, whose variables hold a step's graph until the next step has rebound
    them); the fused model and torch are called a step at a time. Sampling runs under
    no_grad where the engine has it (the pure-Python script has not: it records the graph
    of every sampled token, as microgpt does)."""
    if name == "fastgrad-fused":
        from fastgrad._core import Value
        from fastgrad.gpt import GPT
        gpt = GPT(Value=Value)
        return (gpt.train_step(k, NUM_STEPS) for k in range(NUM_STEPS)), gpt.sample
    if name == "torch":
        import torch_gpt
        model = torch_gpt.TorchGPT(load_script("from fastgrad.reference import Value"))
        return (model.train_step(k, NUM_STEPS) for k in range(NUM_STEPS)), None
    script = load_script(DROP_INS[name])

    def sample():
        if name == "microgpt-style":
            return script.sample()
        with fastgrad.no_grad():
            return script.sample()
    return script.training(NUM_STEPS), sample


def one_round(name):
    """One round of an engine: (seconds per training step over steps 1 .. STEPS, the
    losses of steps 0 .. STEPS, seconds per name sampled or None)."""
    steps, sample = runner(name)
    losses = [next(steps)]
    gc.collect()
    t0 = time.perf_counter()
    losses += [next(steps) for _ in range(STEPS)]
    seconds = (time.perf_counter() - t0) / STEPS
    sample_seconds = None
    if sample is not None:
        random.seed(0)
        t0 = time.perf_counter()
        for _ in range(SAMPLES):
            sample()
        sample_seconds = (time.perf_counter() - t0) / SAMPLES
    return seconds, losses, sample_seconds


def bench(available_torch):
    """ms per training step on every engine (losses checked against the baseline's), and
    ms per name sampled. The engines take turns, a round each, until each has had its
    rounds: the machine's drift over the minutes of the run then falls on all of them
    alike rather than on whichever ran when it was slow (the ratios are the point)."""
    names = [name for name in ENGINES if name != "torch" or available_torch]
    runs = {name: [] for name in names}
    for r in range(max(ENGINES[name][1] for name in names)):
        for name in names:
            what, rounds = ENGINES[name]
            if r < rounds:
                print(f"  microgpt    {name:<17} round {r + 1} of {rounds} ({STEPS} steps) ...",
                      file=sys.stderr, flush=True)
                runs[name].append(one_round(name))
                gc.collect()
    results = {}
    baseline = runs["microgpt-style"][0][1]
    for name in names:
        what, rounds = ENGINES[name]
        times = [seconds for seconds, _, _ in runs[name]]
        samples = [seconds for _, _, seconds in runs[name] if seconds is not None]
        losses = runs[name][-1][1]
        entry = {"what": what, "median": statistics.median(times) * 1e3, "unit": "ms/step",
                 "rounds": rounds, "times": times, "losses": losses}
        if samples:
            entry["sample_ms"] = statistics.median(samples) * 1e3
        rel = 1e-9 if name in DROP_INS else 1e-6    # the fused layers round differently
        entry["matched"] = all(
            len(run) == len(baseline) and
            all(abs(a - b) <= rel * abs(b) for a, b in zip(run, baseline))
            for _, run, _ in runs[name])
        print(f"  microgpt    {name:<17} median {entry['median']:,.3f} ms/step" +
              ("" if entry["matched"] else "   ** LOSSES DIFFER FROM THE BASELINE **"),
              file=sys.stderr, flush=True)
        results[name] = entry
    results["overhead"] = overhead()
    results["memory"] = memory()
    results["backward"] = backward_in_the_loop()
    return results


def overhead():
    """What the fused step spends per helper call: each helper's calls in one training
    step (counted), the time of one call at its smallest (one term: per-call overhead,
    from Python through the engine and back, including freeing its node), and linear's
    time per term at 16 x 16 (from the difference with 1 x 1), over rows and over a
    matrix()."""
    from fastgrad import _core
    from fastgrad import functional as F
    from fastgrad import gpt as gpt_module
    V = _core.Value
    counts = {}
    originals = {name: getattr(F, name) for name in ("linear", "rmsnorm", "softmax", "cross_entropy",
                                                     "add", "mul", "relu", "attention")}

    def counting(name):
        def call(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return originals[name](*args, **kwargs)
        return call
    model = gpt_module.GPT(Value=V)
    model.train_step(0, NUM_STEPS)
    for name in originals:
        setattr(F, name, counting(name))
    try:
        model.train_step(1, NUM_STEPS)
    finally:
        for name, f in originals.items():
            setattr(F, name, f)
    x1, w1 = [V(0.5)], [[V(0.25)]]
    x16 = [V(0.01 * k) for k in range(16)]
    w16 = [[V(0.001 * (j + k)) for j in range(16)] for k in range(16)]
    calls = {"linear": lambda: F.linear(x1, w1), "rmsnorm": lambda: F.rmsnorm(x1),
             "softmax": lambda: F.softmax(x1), "cross_entropy": lambda: F.cross_entropy(x1, 0),
             "add": lambda: F.add(x1, x1), "mul": lambda: F.mul(x1, 0.5),
             "relu": lambda: F.relu(x1), "attention": lambda: F.attention(x1, [x1], [x1], 1)}
    best = lambda f, n: min(timeit.repeat(f, number=n, repeat=7)) / n
    per_call = {name: best(f, 2000) * 1e6 for name, f in calls.items()}
    per_term = (best(lambda: F.linear(x16, w16), 500) * 1e6 - per_call["linear"]) / 256 * 1e3
    m1, m16 = F.matrix(w1), F.matrix(w16)
    per_call_matrix = best(lambda: F.linear(x1, m1), 2000) * 1e6
    per_term_matrix = (best(lambda: F.linear(x16, m16), 500) * 1e6 - per_call_matrix) / 256 * 1e3
    return {"calls_per_step": counts, "us_per_call": per_call, "linear_ns_per_term": per_term,
            "linear_matrix_us_per_call": per_call_matrix,
            "linear_matrix_ns_per_term": per_term_matrix}


MEMORY_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import gpt_runs
def rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096 / 2**20
out = {}
for name in ("fastgrad-fused", "fastgrad"):
    steps, _ = gpt_runs.runner(name)
    at = {}
    for k in range(1000):
        next(steps)
        if k + 1 in (100, 1000):
            at[k + 1] = rss_mb()
    out[name] = at
print(out)
"""


def memory():
    """RSS at steps 100 and 1,000 of a fused and a drop-in run, in a fresh interpreter."""
    print("  microgpt    memory over 1,000 steps (fresh interpreter) ...", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, os.path.dirname(__file__)],
                         capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return ast.literal_eval(out.stdout.strip())


BACKWARD_SCRIPT = r"""
import gc, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import gpt_runs
from fastgrad import _core
script = gpt_runs.load_script("from fastgrad._core import Value")
doc = script.docs[0]

def ns_per_node():
    before = _core._tape_stats()["live"]
    loss = gpt_runs.forward(script, doc)
    nodes = _core._tape_stats()["live"] - before
    t0 = time.perf_counter()
    loss.backward()
    return (time.perf_counter() - t0) / nodes * 1e9

alone, loop = [], []
ns_per_node()                       # (its pages touched: the rounds below read warm memory)
for segment in range(4):
    for _ in range(3):              # alone on the arena: laid out as on a fresh one
        alone.append(ns_per_node())
    if segment == 3:
        break
    steps = script.training(1000)
    for _ in range(100):
        next(steps)
    for _ in range(3):              # between two steps of the loop, as its own graphs are
        loop.append(ns_per_node())
        next(steps)
    steps.close()                   # (the loop's graphs die with it)
    gc.collect()
print(statistics.median(alone), statistics.median(loop))
"""


def backward_in_the_loop():
    """ns per node of the backward of one name's drop-in graph (the script's first name),
    in a fresh interpreter: alone on the arena (laid out as on a fresh one, once its pages
    have been touched), and built after 100 steps of the script's loop, between two of its
    steps, where it shares the arena with the loop's last graph. Issue 14 asks the second
    to be within 1.3x of the first. The two take turns, three rounds at a time (alone,
    loop, alone, loop, alone, loop, alone: the loop starts afresh each time), so that the
    machine's drift falls on both: measured one after the other, single runs read
    0.74-1.44x with the same code. Medians of 12 and 9 rounds."""
    print("  microgpt    backward alone on the arena and in the loop (fresh interpreter) ...",
          file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, "-c", BACKWARD_SCRIPT, os.path.dirname(__file__)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1]}
    alone, loop = map(float, out.stdout.split())
    return {"alone_ns_per_node": alone, "loop_ns_per_node": loop}


def table(results):
    base = results.get("microgpt-style", {}).get("median")
    lines = ["| engine | ms/step | vs microgpt-style | ms per sampled name | losses |",
             "|---|---:|---:|---:|---|"]
    for name, (what, _) in ENGINES.items():
        e = results.get(name)
        if e is None:
            lines.append(f"| {what} | – | – | – | not installed |")
            continue
        ms = e["median"]
        cell = f"{ms:,.0f}" if ms >= 100 else f"{ms:,.2f}" if ms >= 1 else f"{ms:.3f}"
        vs = f"{base / ms:,.1f}x" if base else "–"
        sample = f"{e['sample_ms']:.3f}" if "sample_ms" in e else "–"
        lines.append(f"| {what} | {cell} | {vs} | {sample} | "
                     f"{'equal' if e['matched'] else 'DIFFER'} |")
    lines.append("| micrograd | cannot run microgpt: its Value has no exp or log | – | – | – |")
    oh = results.get("overhead")
    if oh:
        calls = oh["calls_per_step"]
        spent = sum(calls[k] * oh["us_per_call"][k] for k in calls) / 1e3
        lines.append("\nfused step, per-call overhead of the helpers (one call at one term, "
                     "from Python and back): " + ", ".join(
                         f"{k} {oh['us_per_call'][k]:.2f} us x {calls[k]}" for k in calls) +
                     f" calls in step 1 = {spent:.3f} ms; linear then costs "
                     f"{oh['linear_ns_per_term']:.1f} ns per term (16 x 16); over a "
                     f"matrix() (as the fused model multiplies by its weights) "
                     f"{oh['linear_matrix_us_per_call']:.2f} us per call and "
                     f"{oh['linear_matrix_ns_per_term']:.1f} ns per term")
    bw = results.get("backward", {})
    if "error" in bw:
        lines.append(f"\nbackward of a drop-in graph: {bw['error']}")
    elif bw:
        lines.append(f"\nbackward of a drop-in graph (the first name's): "
                     f"{bw['alone_ns_per_node']:.2f} ns/node alone on the arena, "
                     f"{bw['loop_ns_per_node']:.2f} ns/node between two steps of the loop "
                     f"after 100 ({bw['loop_ns_per_node'] / bw['alone_ns_per_node']:.2f}x)")
    mem = results.get("memory", {})
    if "error" in mem:
        lines.append(f"\nmemory over 1,000 steps: {mem['error']}")
    else:
        for name, at in mem.items():
            lines.append(f"\n{name}: RSS {at[100]:.1f} MB at step 100, {at[1000]:.1f} MB at "
                         f"step 1,000 ({at[1000] - at[100]:+.1f} MB)")
    return "\n".join(lines)
