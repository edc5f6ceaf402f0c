"""Every workload of workloads.py on every engine that runs it (workloads.RUNS), through
pytest-benchmark: `pytest benchmarks/` (or `make bench-pytest`)."""
import pytest

import workloads as W
from conftest import bench


@pytest.mark.parametrize("engine", ["float", "fastgrad", "reference", "micrograd", "torch"])
@pytest.mark.parametrize("name", list(W.WORKLOADS))
def test_workload(benchmark, name, engine):
    bench(benchmark, W.workload(name), engine)
