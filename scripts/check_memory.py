"""Runs scripts/memcheck_workload.py under valgrind memcheck and judges the report.

CPython itself (not built for valgrind) reports uninitialised-value warnings at start-up;
those are not fastgrad's. This fails on any invalid read or write, on any error whose
stack passes through fastgrad's extension, and on any definite leak.
Usage: python scripts/check_memory.py [PYTHON]
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile


def main():
    python = sys.argv[1] if len(sys.argv) > 1 else sys.executable
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        cmd = ["valgrind", "--tool=memcheck", "--leak-check=full",
               "--show-leak-kinds=definite", f"--log-file={log.name}",
               python, os.path.join(here, "memcheck_workload.py")]
        env = dict(os.environ, PYTHONMALLOC="malloc")
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        report = open(log.name).read()
    if run.returncode != 0:
        print(run.stdout, run.stderr)
        sys.exit(f"the workload failed under valgrind (exit {run.returncode})")
    blocks = re.split(r"\n==\d+== \n", report)
    bad = [b for b in blocks
           if re.search(r"Invalid (read|write|free)", b)
           or (re.search(r"__pyx_|_core\.cpython", b)      # a frame in fastgrad's extension
               and re.search(r"==\d+== (Conditional|Use of|Invalid|Mismatched)", b))]
    lost = re.search(r"definitely lost: ([\d,]+) bytes", report)
    lost_bytes = int(lost.group(1).replace(",", "")) if lost else 0
    for b in bad:
        print(b, "\n")
    print(f"valgrind: {len(bad)} errors in fastgrad, {lost_bytes} bytes definitely lost")
    sys.exit(1 if bad or lost_bytes else 0)


if __name__ == "__main__":
    main()
