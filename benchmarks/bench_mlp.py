"""micrograd's demo training step."""
import pytest

import workloads as W
from conftest import bench


@pytest.mark.parametrize("engine", ["fastgrad", "reference", "micrograd", "torch"])
def test_mlp_step(benchmark, engine):
    bench(benchmark, W.workload("mlp-step"), engine)
