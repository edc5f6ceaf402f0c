"""`python -m fastgrad`: the version, the engine, the compiled module and its build, and a
self-check whose failure is the exit status."""
import math
import pathlib
import re
import subprocess
import sys
from importlib import metadata

import pytest

import fastgrad
from fastgrad import _engine
from fastgrad import __main__ as cli

PYPROJECT = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_the_version_is_the_package_metadata():
    assert fastgrad.__version__ == metadata.version("fastgrad")
    if PYPROJECT.exists():                      # (the tests of an installed wheel may lack it)
        written = re.search(r'^version = "(.+)"$', PYPROJECT.read_text(), re.M).group(1)
        assert fastgrad.__version__ == written


def test_the_version_is_read_only_when_asked_for():
    # importlib.metadata (email, zipfile, socket, ...) was 60 of the 70 ms of
    # `import fastgrad`: importing fastgrad and its modules leaves it unloaded, and
    # fastgrad.__version__ loads it then
    code = ("import sys; before = 'importlib.metadata' in sys.modules; "
            "import fastgrad, fastgrad.engine, fastgrad.nn, fastgrad.microgpt, "
            "fastgrad.functional, fastgrad.optim; "
            "print(before, 'importlib.metadata' in sys.modules, 'inspect' in sys.modules); "
            "from fastgrad import __version__; "
            "print(__version__, 'importlib.metadata' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    loaded, asked = run.stdout.splitlines()
    if loaded.startswith("True"):
        pytest.skip("this interpreter loads importlib.metadata at startup (site)")
    assert loaded == "False False False"
    assert asked == f"{metadata.version('fastgrad')} True"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fastgrad.nope
    assert "__version__" in dir(fastgrad) and "Value" in dir(fastgrad)


def test_python_m_fastgrad_reports_the_install_and_checks_a_gradient():
    run = subprocess.run([sys.executable, "-m", "fastgrad"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"fastgrad {fastgrad.__version__}"
    if _engine.ENGINE == "compiled":
        assert lines[1] == "engine: compiled"
    else:
        assert lines[1] == f"engine: reference ({_engine.REASON})"
    try:
        from fastgrad import _core
    except ImportError:
        assert lines[2].startswith("compiled module: not available (")
    else:
        assert lines[2] == f"compiled module: {_core.__file__}"
        mode, rest = re.fullmatch(r"build: ([\w-]+), Cython ([\d.]+\w*); (.+)", lines[3]).group(1, 3)
        assert mode == _core.BUILD["mode"] and mode in ("release", "debug", "address", "debug-address")
        assert {"-ffp-contract=off", "-fno-math-errno"} <= set(rest.split())   # setup.py's flags
    assert re.fullmatch(r"python: CPython [\d.]+\S* on \w+ \w+", lines[-3])

    # the two self-check lines: backward against a finite difference, and the verdict
    found = re.fullmatch(r"self-check: d/dx tanh\(x\*x \+ exp\(x\)\) at x = 0\.5: backward (\S+), "
                         r"finite difference (\S+)", lines[-2])
    backward, numeric = map(float, found.groups())
    x = 0.5
    closed_form = (1 - math.tanh(x * x + math.exp(x)) ** 2) * (2 * x + math.exp(x))
    assert backward == pytest.approx(closed_form, rel=1e-14)
    assert numeric == pytest.approx(closed_form, rel=1e-7)
    assert lines[-1].startswith("self-check: ok (|difference| ")


def test_a_failing_self_check_exits_non_zero(monkeypatch, capsys):
    def cube_with_a_wrong_derivative(x):
        out = type(x)(x.data ** 3, (x,), 'cube')

        def _backward():
            x.grad += 2 * x.data * out.grad         # (should be 3 x^2)
        out._backward = _backward
        return out

    monkeypatch.setattr(cli, "check_function", cube_with_a_wrong_derivative)
    assert cli.main([]) == 1
    report = capsys.readouterr().out.splitlines()
    backward, numeric = map(float, re.search(r"backward (\S+), finite difference (\S+)$",
                                             report[-2]).groups())
    assert backward == 2 * 0.5 and numeric == pytest.approx(3 * 0.5 ** 2, rel=1e-7)
    assert report[-1].startswith("self-check: FAILED (|difference| 0.25, ")


def test_python_m_fastgrad_answers_help_and_version_and_refuses_other_arguments():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "fastgrad", *args], capture_output=True,
                              text=True)
    shown = run("--help")
    assert shown.returncode == 0 and shown.stdout.startswith("usage: python -m fastgrad")
    assert "self-check" not in shown.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout == f"fastgrad {fastgrad.__version__}\n"
    wrong = run("--verbose")
    assert wrong.returncode == 2 and "unrecognized arguments: --verbose" in wrong.stderr


@pytest.mark.parametrize("command", [["fastgrad"], ["fastgrad.gpt", "2"],
                                     ["fastgrad.demo", "--steps", "2"]])
def test_a_reader_that_closed_the_pipe_ends_the_command_quietly(command, tmp_path):
    # `python -m fastgrad | head -1`: the reader is gone before the command prints, and
    # the command ends with status 1 and no traceback (a BrokenPipeError before)
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    with subprocess.Popen([sys.executable, "-m", *command], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as run:
        run.stdout.close()              # (the command takes ~0.1 s to start up)
        errors = run.stderr.read().decode()
        status = run.wait()
    assert status == 1
    assert "Traceback" not in errors and "Error" not in errors, errors
