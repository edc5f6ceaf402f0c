"""The graph workloads: ops (forward), backward, ops-replay, chain, wide, lecture-op."""
import pytest

import workloads as W
from conftest import bench


@pytest.mark.parametrize("engine", ["float", "fastgrad", "reference", "micrograd", "torch"])
@pytest.mark.parametrize("name", ["ops", "backward", "ops-replay", "chain", "wide", "lecture-op"])
def test_graph(benchmark, name, engine):
    bench(benchmark, W.workload(name), engine)
