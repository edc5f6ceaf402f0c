"""examples/lecture.ipynb runs top to bottom on a real Jupyter kernel (nbclient and
ipykernel), on the engine this suite runs on: the kernel inherits FASTGRAD_PUREPYTHON,
so the suite's second pass runs it on the reference. Its key outputs are checked."""
import ast
import math
import pathlib
import re
import shutil
import sys
import xml.etree.ElementTree as ET

import pytest

import fastgrad
from fastgrad import viz

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "examples" / "lecture.ipynb"
pytestmark = [pytest.mark.skipif(not NOTEBOOK.exists(), reason="examples/ is not beside the tests"),
              pytest.mark.unsanitized]        # (the kernel is a process of its own)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook after a run in a fresh kernel of this interpreter, cells by tag."""
    work = tmp_path_factory.mktemp("notebook")
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PLATFORM_DIRS", "1")      # (jupyter_core warns without it)
    mp.setenv("IPYTHONDIR", str(work / "ipython"))
    mp.setenv("MPLCONFIGDIR", str(work / "matplotlib"))
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        # the "python3" kernel, started as this interpreter (jupyter_client runs the
        # spec's "python" as sys.executable)
        client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                         resources={"metadata": {"path": str(work)}})
        client.execute()
    finally:
        mp.undo()
    return {tag: cell for cell in nb.cells for tag in cell.metadata.get("tags", [])}, nb


def text(cell):
    """What a cell printed (its stdout)."""
    return "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream"
                   and o["name"] == "stdout")


def test_every_cell_ran_without_an_error(executed):
    _, nb = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o["output_type"] == "error"]
    # nothing went to stderr either (warnings, a traceback shown by a display hook)
    assert not [o["text"] for c in code for o in c.outputs
                if o["output_type"] == "stream" and o["name"] == "stderr"]


def test_it_ran_on_this_suites_engine(executed):
    cells, _ = executed
    assert text(cells["engine"]).strip() == f"fastgrad {fastgrad.__version__}, engine: {fastgrad.ENGINE}"


def test_the_lecture_graph_and_its_hand_made_backward(executed):
    cells, _ = executed
    grads = dict(re.findall(r"dL/d(\w) = (\S+)", text(cells["manual-backward"])))
    # L = (a*b + c) * f at a=2, b=-3, c=10, f=-2
    assert {k: float(v) for k, v in grads.items()} == {
        'a': 6.0, 'b': -4.0, 'c': -2.0, 'e': -2.0, 'd': -2.0, 'f': 4.0}
    picture = cells["draw-L"].outputs[0]["data"]
    if shutil.which("dot"):
        svg = ET.fromstring(picture["image/svg+xml"])
        assert "data -8.0000" in [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    else:       # the DOT source under the one line saying what to install
        assert picture["text/plain"].startswith(viz.NO_DOT) and "data -8.0000" in picture["text/plain"]


def test_a_value_used_twice_accumulates(executed):
    cells, _ = executed
    out = text(cells["accumulate"])
    assert "db/da = 2.0" in out
    assert "d/dx xy(x + y) = -3.0 (2xy + y^2 = -3.0)" in out
    assert "d/dy xy(x + y) = -8.0 (x^2 + 2xy = -8.0)" in out


def test_the_neuron_grads(executed):
    cells, _ = executed
    grads = dict(re.findall(r"do/d(\w+) = (\S+)", text(cells["neuron-grads"])))
    # o = tanh(x1 w1 + x2 w2 + b) with 1 - o^2 = 1/2: do/dx_i = w_i / 2, do/dw_i = x_i / 2
    assert grads == {'x1': '-1.5000', 'w1': '1.0000', 'x2': '0.5000', 'w2': '0.0000', 'b': '0.5000'}
    tanh, by_exp = text(cells["neuron-exp"]).splitlines()
    assert tanh.split(":", 1)[1].strip() == by_exp.split(":", 1)[1].strip() == "[-1.5, 1.0, 0.5, 0.0, 0.5]"


def test_the_moons_loss_goes_down_and_is_plotted(executed):
    cells, _ = executed
    steps = re.findall(r"step +(\d+): loss (\S+), accuracy (\d+)%", text(cells["training"]))
    assert [int(k) for k, _, _ in steps] == [0, 5, 10, 15, 20, 25, 29]
    losses = [float(loss) for _, loss, _ in steps]
    assert losses[-1] < 0.5 * losses[0]
    assert int(steps[-1][2]) >= 90
    assert any("image/png" in o.get("data", {}) for o in cells["plots"].outputs)


def test_the_microgpt_section(executed):
    cells, _ = executed
    out = text(cells["functional"])
    assert "linear: [-1.5, 2.5]" in out
    ce = re.search(r"cross-entropy: (\S+) = -log p\[0\] = (\S+)", out)
    assert ce.group(1) == ce.group(2)
    logits = [2.0, 1.0, 0.1]
    p = [math.exp(v) / sum(math.exp(u) for u in logits) for v in logits]
    assert f"its gradient: {[round(p[0] - 1, 4), round(p[1], 4), round(p[2], 4)]}" in out

    gpt = text(cells["gpt"])
    assert "32033 names, 27 tokens, 4192 parameters" in gpt
    losses = [float(v) for v in re.search(r"losses: (.+)", gpt).group(1).split()]
    assert len(losses) == 10 and all(math.isfinite(v) for v in losses)
    assert abs(losses[0] - math.log(27)) < 0.2          # an untrained model: about uniform
    names = ast.literal_eval(re.search(r"names after 10 steps: (.+)", gpt).group(1))
    assert len(names) == 5 and all(isinstance(n, str) for n in names)


def test_the_kernel_is_this_interpreter():
    # what makes the engine check above meaningful: jupyter_client starts "python3" as
    # sys.executable
    from jupyter_client.kernelspec import KernelSpecManager
    argv = KernelSpecManager().get_kernel_spec("python3").argv
    assert argv[0] in ("python", "python3", sys.executable)
