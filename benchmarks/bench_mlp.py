"""micrograd's demo training step: rebuilt every step, and replayed."""
import pytest

import workloads as W
from conftest import bench


@pytest.mark.parametrize("engine", ["fastgrad", "reference", "micrograd", "torch"])
@pytest.mark.parametrize("name", ["mlp-step", "mlp-replay", "mlp-replay-fused"])
def test_mlp_step(benchmark, name, engine):
    bench(benchmark, W.workload(name), engine)
