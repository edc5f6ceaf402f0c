"""pytest-benchmark over the workloads of workloads.py: `pytest benchmarks/`.

Each test is one engine on one workload; `benchmark.group` is the workload, so engines
print side by side. Every round's setup runs outside the timer (pedantic mode).
"""
import math

import pytest

import workloads as W

ENGINES = W.engines()
W.settle_heap()


def bench(benchmark, workload, engine_name):
    if engine_name not in ENGINES:
        pytest.skip(f"{engine_name} is not installed")
    if engine_name not in workload.engines:
        pytest.skip(f"{workload.name} does not run on {engine_name} (workloads.RUNS)")
    engine = ENGINES[engine_name]
    benchmark.group = workload.name
    benchmark.extra_info.update(engine=engine_name, unit=workload.unit, per=workload.per)
    states = []

    def setup():
        states.append(workload.setup(engine))
        return (states[-1],), {}

    try:
        benchmark.pedantic(workload.run, setup=setup, rounds=workload.rounds.get(engine_name, 3))
    except RecursionError:
        benchmark.extra_info["error"] = "RecursionError"
        pytest.skip(f"{engine_name} raised RecursionError on {workload.name}")
    result = workload.result(states[-1])
    ref = W.reference_result(workload)
    benchmark.extra_info["matched"] = len(result) == len(ref) and all(
        math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(result, ref))
