"""The long fuzzing run: the suite's hypothesis targets with many more (random) examples.

    .venv/bin/python bench/fuzz.py [--examples 5000] [--target qcow2 ...]

Prints, per target, how many examples ended in success and in each classified error; stops
at the first example that raised anything else, hung, or exceeded the memory bound (hypothesis
then shrinks it and prints the smallest input that fails). Exit status 1 on such a find.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.importer.fuzzing import TARGETS, check_example, edits  # noqa: E402


def fuzz(name: str, examples: int) -> dict[str, int]:
    target = TARGETS[name]
    seed = target.seed()
    outcomes: dict[str, int] = {}

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def property_(data: st.DataObject) -> None:
        outcome = check_example(target, data.draw(edits(seed, target.regions(seed))))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    property_()
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--target", action="append", choices=sorted(TARGETS))
    args = parser.parse_args()
    logging.getLogger("importer").setLevel(logging.ERROR)  # skipped tar members are expected
    failed = False
    for name in args.target or list(TARGETS):
        started = time.monotonic()
        try:
            outcomes = fuzz(name, args.examples)
        except AssertionError as error:
            print(f"{name}: FAILED: {error}")
            failed = True
            continue
        summary = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        print(f"{name}: {sum(outcomes.values())} examples in {time.monotonic() - started:.0f} s: "
              f"{summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
