"""The release path: `make wheels` finds every supported CPython, 3.14 and 3.15 included,
on PATH or under pyenv (scripts/wheels.py)."""
import importlib.util
import os
import pathlib
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "wheels.py"
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="scripts/ is not beside the tests")


def load_wheels():
    spec = importlib.util.spec_from_file_location("wheels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_wheels_picks_up_3_14_and_3_15(tmp_path, monkeypatch):
    wheels = load_wheels()
    assert wheels.VERSIONS[-2:] == ["3.14", "3.15"]
    # this interpreter, standing in for a 3.14 under pyenv and a 3.15 on PATH
    pyenv = tmp_path / "pyenv"
    for name in ("3.14.0", "3.14.2"):
        (pyenv / "versions" / name / "bin").mkdir(parents=True)
        os.symlink(sys.executable, pyenv / "versions" / name / "bin" / "python3.14")
    on_path = tmp_path / "bin"
    on_path.mkdir()
    os.symlink(sys.executable, on_path / "python3.15")
    monkeypatch.setenv("PYENV_ROOT", str(pyenv))
    monkeypatch.setenv("PATH", str(on_path))
    assert wheels.interpreters() == {
        "3.14": str(pyenv / "versions" / "3.14.2" / "bin" / "python3.14"),    # the newest
        "3.15": str(on_path / "python3.15")}
    assert [wheels.tag(v) for v in wheels.VERSIONS] == [
        "cp310", "cp311", "cp312", "cp313", "cp314", "cp315"]
