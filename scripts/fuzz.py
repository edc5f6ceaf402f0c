"""`make fuzz`: runs the API fuzz target (tests/test_fuzz.py) for a fixed time.

Each round is a fresh hypothesis run of the state machine with a large example budget;
rounds repeat until the time is up. A failure prints hypothesis's shrunk sequence of calls
and exits non-zero. Shrinking prints nothing and can take many minutes: a run that seems
stuck is usually shrinking a failure (`--no-shrink` prints the first failing sequence as
found). Usage: python scripts/fuzz.py [--seconds N] [--examples N] [--no-shrink]
"""
import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from hypothesis.stateful import run_state_machine_as_test  # noqa: E402

import test_fuzz  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--examples", type=int, default=200, help="examples per round")
    parser.add_argument("--no-shrink", action="store_true",
                        help="print a failing sequence as found, unshrunk")
    args = parser.parse_args()
    phases = [Phase.generate] if args.no_shrink else [Phase.generate, Phase.shrink]
    budget = settings(max_examples=args.examples, stateful_step_count=80, deadline=None,
                      database=None, suppress_health_check=list(HealthCheck), phases=phases)
    start = time.monotonic()
    rounds = 0
    while time.monotonic() - start < args.seconds:
        run_state_machine_as_test(test_fuzz.API, settings=budget)
        rounds += 1
        print(f"fuzz: round {rounds} passed ({args.examples} sequences), "
              f"{time.monotonic() - start:.0f} s", flush=True)
    print(f"fuzz: {rounds * args.examples} sequences of API calls, engines agreed on all")


if __name__ == "__main__":
    main()
