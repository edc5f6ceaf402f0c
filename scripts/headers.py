"""`make check-headers`: does the generated C compile against CPython headers this machine
has no interpreter for (3.14 and 3.15 by default)?

Debian's unstable suite ships each CPython's headers as libpython3.X-dev. This downloads
those packages with apt into build/headers/ (a private package list and cache there:
nothing is installed or changed system-wide), unpacks them there, and compiles the
release build's C (build/release/src/fastgrad/_core.c, written by `make install`) against
each version's headers with the release flags. It needs apt and network access to
deb.debian.org. Usage: python scripts/headers.py [3.14 3.15 ...]
"""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "headers"
SOURCE = ROOT / "build" / "release" / "src" / "fastgrad" / "_core.c"
SUITE = "deb http://deb.debian.org/debian sid main"
FLAGS = ["-c", "-fPIC", "-O3", "-Wall", "-ffp-contract=off", "-DFASTGRAD_DEBUG=0"]


def run(*cmd, **kw):
    print("  $ " + " ".join(map(str, cmd)), flush=True)
    return subprocess.run(list(map(str, cmd)), check=True, **kw)


def apt(*args):
    """apt-get on the private package list and cache under WORK."""
    options = [f"Dir::Etc::SourceList={WORK / 'sources.list'}", "Dir::Etc::SourceParts=/dev/null",
               f"Dir::State::Lists={WORK / 'lists'}", f"Dir::Cache={WORK / 'cache'}"]
    return run("apt-get", "-q", *[a for o in options for a in ("-o", o)], *args, cwd=WORK / "debs")


def main(versions):
    if not SOURCE.exists():
        sys.exit(f"headers: {SOURCE.relative_to(ROOT)} is missing: run `make install` first")
    for d in ("lists/partial", "cache/archives/partial", "debs", "root"):
        (WORK / d).mkdir(parents=True, exist_ok=True)
    (WORK / "sources.list").write_text(SUITE + "\n")
    apt("update")
    failed = []
    for v in versions:
        apt("download", f"libpython{v}-dev")
        deb = max((WORK / "debs").glob(f"libpython{v}-dev_*.deb"))
        run("dpkg-deb", "-x", deb, WORK / "root")
        include = WORK / "root" / "usr" / "include"
        obj = WORK / f"_core-{v}.o"
        compiled = subprocess.run(
            ["gcc", *FLAGS, f"-I{include}", f"-I{include / f'python{v}'}", str(SOURCE),
             "-o", str(obj)], capture_output=True, text=True)
        warnings = [line for line in compiled.stderr.splitlines() if "warning:" in line]
        if compiled.returncode:
            print(compiled.stderr)
            failed.append(v)
        print(f"headers: CPython {v} ({deb.name}): "
              f"{'compiled' if not compiled.returncode else 'FAILED'}, {len(warnings)} warnings",
              flush=True)
        for line in warnings:
            print(f"    {line}")
    if failed:
        sys.exit(f"headers: the C did not compile against {', '.join(failed)}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["3.14", "3.15"])
