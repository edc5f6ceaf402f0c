"""`make bench`: every workload on every engine in one run; one table of medians and ratios.

Writes <out>/results.json and <out>/ratios.png and prints the table (Markdown, so that
it can be pasted into the README). Progress goes to stderr. Timing thresholds are never
asserted here: this reports, it does not judge.
"""
import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.setrecursionlimit(10_000)       # a notebook's usual raise; micrograd still fails deep graphs

import gpt_runs  # noqa: E402
import workloads as W  # noqa: E402

ENGINE_ORDER = ["float", "fastgrad", "reference", "micrograd", "torch"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def close(a, b, rel=1e-9):
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def measure(group, engine, rounds):
    """Seconds of `rounds` timed runs of each workload of the group, each run on fresh
    untimed setup, and each workload's answer from its last round (for the correctness
    check). The workloads take turns round by round, so that the machine's drift over
    the run falls on them alike: a group is workloads whose ratio is the point. (A run's
    state is dropped before the next setup: it would change the arena the next one
    builds on.)"""
    times = [[] for _ in group]
    answers = [None] * len(group)
    for r in range(rounds):
        for k, workload in enumerate(group):
            gc.collect()
            state = workload.setup(engine)
            t0 = time.perf_counter()
            workload.run(state)
            times[k].append(time.perf_counter() - t0)
            if r == rounds - 1:
                answers[k] = workload.result(state)
            state = None
    return times, answers


def run_group(group, available, only):
    """{workload name: {engine: entry}} for a group of workloads (usually one) measured
    together (see measure)."""
    results = {workload.name: {} for workload in group}
    reference_answers = [None] * len(group)
    first = group[0]
    # the reference runs first: every other engine's answer is checked against it
    order = sorted(first.engines, key=lambda e: (e != "reference", ENGINE_ORDER.index(e)))
    for name in order:
        if only and name not in only:
            continue
        if name not in available:
            continue
        engine = available[name]
        rounds = first.rounds.get(name, 3)
        names = " and ".join(workload.name for workload in group)
        turns = " each, taking turns" if len(group) > 1 else ""
        log(f"  {names:<11} {name:<10} {rounds} rounds{turns} ...")
        try:
            times, answers = measure(group, engine, rounds)
        except RecursionError:
            for workload in group:
                results[workload.name][name] = {"rounds": rounds, "error": "RecursionError"}
            log("    RecursionError (as expected of micrograd on deep graphs)")
            gc.collect()
            continue
        for k, workload in enumerate(group):
            entry = {"rounds": rounds}
            med = statistics.median(times[k]) / workload.per * workload.scale
            entry.update(median=med, times=times[k], unit=workload.unit)
            if name == "reference":
                reference_answers[k] = answers[k]
            if reference_answers[k] is not None:
                entry["matched"] = len(answers[k]) == len(reference_answers[k]) and all(
                    close(a, b) for a, b in zip(answers[k], reference_answers[k]))
            log(f"    {workload.name}: median {med:,.2f} {workload.unit}" +
                ("" if entry.get("matched", True) else "   ** RESULT DIFFERS FROM THE REFERENCE **"))
            results[workload.name][name] = entry
        gc.collect()
    return results


MEMORY_SCRIPT = r"""
import gc, sys
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
engine = sys.argv[1]
if engine == 'fastgrad':
    from fastgrad._core import Value
elif engine == 'reference':
    from fastgrad.reference import Value
else:
    from micrograd.engine import Value
x = Value(1.0)
warm = [x * 1.0 for _ in range(1000)]      # let allocators set up their first arenas
del warm
gc.collect()
before = rss()
y = x
for _ in range(250_000):                   # four nodes a step: two constants, '*', '+'
    y = y * 1.0001 + 0.5
gc.collect()
after = rss()
print((after - before) / (1 + 4 * 250_000))
"""


HANDLES_SCRIPT = MEMORY_SCRIPT.split("y = x\n")[0] + r"""
rnd = __import__('random').Random(7)
nodes = [Value(rnd.uniform(-1, 1)) for _ in range(64)]
before = rss()
for _ in range(200_000):                   # 1M ops, 6 nodes a block (0.5 is a leaf)
    a, b, c = (nodes[rnd.randrange(len(nodes))] for _ in range(3))
    u = a * b; v = c ** 2; w = u + v; r = w.relu(); o = r * 0.5
    nodes += (u, v, w, r, o)               # every op's handle kept
gc.collect()
after = rss()
print((after - before) / 1_200_000)
"""


def memory(available, only, script=MEMORY_SCRIPT, what="memory"):
    """Bytes per node of a live graph, each engine in a fresh interpreter: a 1M-node chain
    whose handles die as it is built (memory), or 1M mixed ops on operands drawn from all
    earlier nodes, every op's handle kept in a list (memory-handles: 1.2M nodes, the
    constants of r * 0.5 included)."""
    results = {}
    for name in ("fastgrad", "reference", "micrograd"):
        if name not in available or (only and name not in only):
            continue
        log(f"  {what:<11} {name:<10} fresh interpreter ...")
        out = subprocess.run([sys.executable, "-c", script, name],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            results[name] = {"error": out.stderr.strip().splitlines()[-1]}
        else:
            b = float(out.stdout.strip())
            results[name] = {"median": b, "unit": "bytes/node", "rounds": 1}
            log(f"    {b:,.1f} bytes/node")
    return results


SCALE_SCRIPT = r"""
import gc, json, sys, time
from fastgrad._core import Value, _tape_stats
def peak_mb():
    # this process's own high-water mark (getrusage's ru_maxrss would also count the
    # resident memory of the benchmark process it was forked from, kept across exec)
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmHWM:')) / 1024
phases = {}
def timed(name, f):
    t = time.perf_counter()
    out = f()
    phases[name] = time.perf_counter() - t
    return out
kind, n = sys.argv[1], int(sys.argv[2])
def make():                                # the kind's graph of n nodes: (root, leaves)
    if kind == 'chain':                    # n nodes deep: '*' and '+' per step, constants beside
        leaves = [Value(1.0)]
        def build():
            y = leaves[0]
            for _ in range(n // 2):
                y = y * 1.0000001 + 0.5
            return y
        return timed('build', build), leaves
    if kind == 'products':                 # acc + p * q, every product over two of 64 leaves
        leaves = [Value(0.5 + k / 128) for k in range(64)]
        def build():
            y = leaves[0]
            for i in range(n // 2):
                y = y + leaves[i & 63] * leaves[(i >> 6) & 63]
            return y
        return timed('build', build), leaves
    leaves = timed('build', lambda: [Value(1.0) for _ in range(n)])   # n leaves summed
    return timed('sum', lambda: sum(leaves)), leaves
root, leaves = make()
nodes = _tape_stats()['live']
timed('backward', root.backward)
timed('backward again', root.backward)     # from the cached order
leaves[0].data = 1.5
timed('recompute', root.recompute)         # the first builds the root's replay
leaves[0].data = 1.25
timed('recompute again', root.recompute)
timed('backward after it', root.backward)  # sweeps the derivatives recompute recorded
ok = root.data == root.data and leaves[0].grad > 0
def free():
    global root, leaves
    del root, leaves
    gc.collect()
timed('free', free)
first = dict(phases)
root, leaves = make()                      # again, in the slots the first graph freed
phases = {**first, 'build again': phases['build'] + phases.get('sum', 0.0)}
del root, leaves
print(json.dumps({'phases': phases, 'nodes': nodes, 'peak_mb': peak_mb(),
                  'live_after_free': _tape_stats()['live'], 'ok': ok}))
"""

SCALE = [("chain", 10_000_000), ("wide", 10_000_000), ("products", 10_000_000)]


def scale():
    """10M-node chain, 10M-leaf sum and 10M-node sum of products of 64 leaves on the
    compiled engine, each in a fresh interpreter: seconds per phase and peak resident
    memory, and the graph built again after it was freed. A crash is reported, not hidden."""
    results = {}
    for kind, n in SCALE:
        name = f"{kind}-{n // 1_000_000}M"
        log(f"  scale       {name:<10} fresh interpreter ...")
        out = subprocess.run([sys.executable, "-c", SCALE_SCRIPT, kind, str(n)],
                             capture_output=True, text=True, timeout=1200)
        if out.returncode != 0:
            why = f"crashed (signal {-out.returncode})" if out.returncode < 0 else \
                (out.stderr.strip().splitlines() or ["failed"])[-1]
            results[name] = {"error": why}
            log(f"    {why}")
            continue
        results[name] = json.loads(out.stdout)
        log("    " + ", ".join(f"{k} {v:.2f} s" for k, v in results[name]["phases"].items())
            + f", peak {results[name]['peak_mb']:,.0f} MB")
    return results


def scale_table(results):
    phases = ["build", "sum", "backward", "backward again", "recompute", "recompute again",
              "backward after it", "free", "build again"]
    lines = ["| graph | nodes | " + " | ".join(f"{p} (s)" for p in phases) +
             " | peak memory | after free |",
             "|---|---:|" + "---:|" * len(phases) + "---:|---:|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | – | " + " | ".join("–" for _ in phases) + f" | {r['error']} | – |")
            continue
        cells = [f"{r['phases'][p]:.2f}" if p in r["phases"] else "–" for p in phases]
        lines.append(f"| {name} | {r['nodes']:,} | " + " | ".join(cells) +
                     f" | {r['peak_mb']:,.0f} MB | {r['live_after_free']} live nodes |")
    return "\n".join(lines)


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}",
            "date": time.strftime("%Y-%m-%d")}


def fmt(entry):
    if entry is None:
        return "–"
    if "error" in entry:
        return entry["error"]
    v = entry["median"]
    s = f"{v:,.0f}" if v >= 100 else f"{v:,.2f}" if v >= 1 else f"{v:.3f}"
    if entry.get("matched") is False:
        s += " (WRONG)"
    return s


def ratio(a, b):
    """b's median over a's: how many times faster a is than b."""
    if not a or not b or "median" not in a or "median" not in b:
        return "–"
    return f"{b['median'] / a['median']:,.1f}x"


def micrograd_entry(results, wname):
    """micrograd's result for a workload, or for the workload it is compared with."""
    mg = results[wname].get("micrograd")
    base = getattr(W.WORKLOADS.get(wname), "compare_to", None)
    if mg is None and base in results:   # e.g. replay against micrograd's rebuilding step
        mg = results[base].get("micrograd")
    return mg


def table(results, engines):
    lines = ["| workload | unit | " + " | ".join(engines) +
             " | fastgrad vs micrograd | fastgrad / float | fastgrad / torch |",
             "|---|---|" + "---:|" * len(engines) + "---:|---:|---:|"]
    for wname, res in results.items():
        unit = next((e["unit"] for e in res.values() if "unit" in e), "")
        cells = [fmt(res.get(e)) for e in engines]
        fg, mg, fl = res.get("fastgrad"), micrograd_entry(results, wname), res.get("float")
        vs_mg = ratio(fg, mg) + " faster" if ratio(fg, mg) != "–" else (
            f"micrograd: {mg['error']}" if mg and "error" in mg else "–")
        if wname.startswith("memory") and fg and mg and "median" in mg:
            vs_mg = f"{mg['median'] / fg['median']:,.1f}x smaller"
        vs_fl = (f"{fg['median'] / fl['median']:.2f}x" if fg and fl and "median" in fl else "–")
        th = res.get("torch")
        vs_th = (f"{fg['median'] / th['median']:.2f}x" if fg and "median" in fg and th
                 and "median" in th else "–")
        lines.append(f"| {wname} | {unit} | " + " | ".join(cells) + f" | {vs_mg} | {vs_fl} | {vs_th} |")
    return "\n".join(lines)


def chart(results, path):
    """Bars of each engine's ratio to micrograd per workload, saved to path; False (and
    nothing drawn) when no workload of the run has a micrograd figure."""
    names = [w for w in results if "median" in (micrograd_entry(results, w) or {})]
    if not names:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    engines = ["fastgrad", "reference", "torch", "float"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(engines)
    for k, e in enumerate(engines):
        xs, ys = [], []
        for n, w in enumerate(names):
            r = results[w]
            if e in r and "median" in r[e]:
                xs.append(n + k * width)
                ys.append(micrograd_entry(results, w)["median"] / r[e]["median"])
        if xs:
            bars = ax.bar(xs, ys, width, label=e)
            ax.bar_label(bars, labels=[f"{y:,.0f}x" if y >= 10 else f"{y:.1f}x" for y in ys],
                         fontsize=7)
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks([n + width * (len(engines) - 1) / 2 for n in range(len(names))], names)
    ax.set_ylabel("times faster (or smaller) than micrograd")
    ax.set_title("fastgrad benchmark suite: ratio to upstream micrograd, same run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


ALL_WORKLOADS = list(W.WORKLOADS) + ["memory", "memory-handles", "microgpt", "scale"]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="bench-results")
    p.add_argument("--workloads", nargs="*", default=None, choices=ALL_WORKLOADS,
                   metavar="WORKLOAD", help=f"a subset of {', '.join(ALL_WORKLOADS)}")
    p.add_argument("--engines", nargs="*", default=None, choices=ENGINE_ORDER,
                   metavar="ENGINE",
                   help=f"a subset of {', '.join(ENGINE_ORDER)}, for every workload but "
                        "microgpt and scale, which have engines of their own")
    args = p.parse_args()

    available = W.engines()
    W.settle_heap()
    log(f"engines: {', '.join(available)}")
    if "micrograd" not in available:
        log("  (upstream micrograd is not installed: pip install micrograd==0.1.0)")
    for name in sorted(set(args.engines or ()) - set(available), key=ENGINE_ORDER.index):
        log(f"  ({name} was asked for but is not installed: its column stays empty)")
    names = args.workloads or ALL_WORKLOADS
    results, scaled, gpt = {}, {}, {}
    t0 = time.perf_counter()
    for k, name in enumerate(names, 1):
        log(f"[{k}/{len(names)}] {name}")
        if name == "memory":
            results[name] = memory(available, args.engines)
        elif name == "memory-handles":
            results[name] = memory(available, args.engines, HANDLES_SCRIPT, name)
        elif name == "scale":
            scaled = scale()
        elif name == "microgpt":
            gpt = gpt_runs.bench("torch" in available)
        elif name in results:
            log(f"  (measured above, taking turns with {W.WORKLOADS[name].takes_turns_with})")
        else:
            # a workload that takes turns with a later one is measured with it
            group = [W.WORKLOADS[name]()] + [W.WORKLOADS[later]() for later in names[k:]
                                             if W.WORKLOADS.get(later) and
                                             W.WORKLOADS[later].takes_turns_with == name]
            results.update(run_group(group, available, args.engines))
    elapsed = time.perf_counter() - t0

    engines = [e for e in ENGINE_ORDER if any(e in r for r in results.values())]
    os.makedirs(args.out, exist_ok=True)
    info = machine()
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": info, "seconds": elapsed, "results": results, "scale": scaled,
                   "microgpt": gpt}, f, indent=1)
    chart_path = os.path.join(args.out, "ratios.png")
    if os.path.exists(chart_path):
        os.remove(chart_path)           # an earlier run's, which this run's results replace
    try:
        if chart(results, chart_path):
            chart_note = f"chart: {chart_path}"
        else:
            chart_note = "no chart: no workload of this run has a micrograd figure"
    except ImportError:
        chart_note = "chart skipped: matplotlib is not installed"
    print(f"\nfastgrad benchmark suite: {info['cpu']}, {info['cores']} cores, "
          f"Python {info['python']}, {info['date']} ({elapsed:.0f} s)\n")
    if results:
        print(table(results, engines))
        print("\nmedians per unit; 'x faster' is micrograd's median over fastgrad's, and the "
              "last two columns fastgrad's over plain floats' and torch's, from this run.")
    if gpt:
        print("\nmicrogpt (one training step on one name, the same seeded model and names on "
              "every engine; medians; ratios from this run):\n")
        print(gpt_runs.table(gpt))
    if scaled:
        print("\nScale (fastgrad, one fresh interpreter per graph; micrograd raises RecursionError "
              "on graphs a few thousand deep):\n")
        print(scale_table(scaled))
    print(f"results: {os.path.join(args.out, 'results.json')}; {chart_note}")
    wrong = [f"{w}/{e}" for w, r in results.items() for e, x in r.items() if x.get("matched") is False]
    wrong += [f"microgpt/{e}" for e, x in gpt.items() if x.get("matched") is False]
    if wrong:
        print(f"\nWARNING: results differ from the reference engine's: {', '.join(wrong)}")


if __name__ == "__main__":
    main()
