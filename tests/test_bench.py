"""`make bench` is the project's main job, and nothing else in the suite runs its driver:
benchmarks/run.py is run here on two cheap workloads, on every engine but torch, as
`make bench` runs it. What is checked is what the run reports, never how fast anything
was: every engine's answers agree with the reference's, the table and results.json hold
what was measured, and the chart is drawn."""
import json
import pathlib
import re
import subprocess
import sys

import pytest

RUN = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
pytestmark = [pytest.mark.compiled,         # (the suite's engines include the compiled one)
              pytest.mark.skipif(not RUN.exists(), reason="benchmarks/ is not beside the tests")]

ENGINES = ["fastgrad", "reference", "micrograd", "float"]


def bench(*args):
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.unsanitized               # (matplotlib cannot run under AddressSanitizer)
def test_a_run_reports_every_engine_and_checks_their_answers(tmp_path):
    out = bench("--out", str(tmp_path), "--workloads", "ops", "softmax-ce",
                "--engines", *ENGINES)
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    # ops runs on all four, softmax-ce on the engines that have its ops (exp and log)
    assert {w: sorted(r) for w, r in results.items()} == {
        "ops": sorted(ENGINES), "softmax-ce": ["fastgrad", "reference"]}
    for workload, entries in results.items():
        for engine, entry in entries.items():
            assert len(entry["times"]) == entry["rounds"] and entry["median"] > 0
            assert entry["unit"] == {"ops": "ns/op", "softmax-ce": "us/sample"}[workload]
            # the same answers as the reference's (the reference is checked against itself)
            assert entry["matched"] is True, (workload, engine)
    assert "RESULT DIFFERS" not in out.stderr
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| workload")}
    assert set(rows) == {"ops", "softmax-ce"}
    assert re.search(r"\| [0-9.]+x (faster|slower) \|", rows["ops"])      # against micrograd
    assert (tmp_path / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args", [["--workloads", "ops", "nope"], ["--engines", "numpy"]])
def test_an_unknown_workload_or_engine_is_refused_before_anything_runs(tmp_path, args):
    out = bench("--out", str(tmp_path), *args)
    assert out.returncode == 2
    assert "invalid choice" in out.stderr and "(choose from" in out.stderr
    assert not (tmp_path / "results.json").exists()
