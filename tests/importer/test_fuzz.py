"""Every binary parser we own, fuzzed with hypothesis (a bounded, reproducible run).

For each target in :mod:`tests.importer.fuzzing` (qcow2 header and tables, plain and zstd
compressed clusters; VMDK sparse header, streamOptimized footer and descriptor; VHD footer,
dynamic header and block table; VHDX and its reader; VDI; the zstd frame walker; tar member handling): edited
seeds end in success or a classified error, within the time and memory bounds. The long run
is ``bench/fuzz.py``.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.importer.fuzzing import TARGETS, check_example, edits

EXAMPLES = 40


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(TARGETS))
def test_parser_ends_cleanly(name: str) -> None:
    target = TARGETS[name]
    seed = target.seed()
    assert check_example(target, seed) == "ok", "the unedited seed must pass"
    outcomes: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def property_(data: st.DataObject) -> None:
        example = data.draw(edits(seed, target.regions(seed)))
        outcome = check_example(target, example)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    property_()
    assert sum(outcomes.values()) >= EXAMPLES, outcomes
