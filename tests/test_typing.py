"""The shipped types: the stubs match the compiled module (mypy's stubtest), and a user's
script on the public API type-checks under `mypy --strict`. Skipped without mypy."""
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("mypy")
HERE = pathlib.Path(__file__).parent / "typing"


def mypy(tool, *args, cwd):
    # run outside the repository (its cache too), so that only the installed package is seen
    out = subprocess.run([sys.executable, "-m", tool, *args], capture_output=True, text=True,
                         cwd=cwd, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.compiled
def test_stubs_match_the_compiled_module(tmp_path):
    mypy("mypy.stubtest", "fastgrad._core", "--allowlist", str(HERE / "stubtest-allowlist.txt"),
         cwd=tmp_path)


def test_a_user_script_type_checks(tmp_path):
    mypy("mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), str(HERE / "user_script.py"),
         cwd=tmp_path)
