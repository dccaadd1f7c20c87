"""StageClock: exclusive, ordered stage seconds that add up to the clock's total."""

from __future__ import annotations

import time

from novelentitymatcher_faiss.index.timing import StageClock, stage_table


def test_nested_stage_time_counts_for_the_inner_stage_only():
    clock = StageClock()
    with clock.stage("outer"):
        time.sleep(0.02)
        begin = time.perf_counter()
        with clock.stage("inner"):
            time.sleep(0.05)
        inner = time.perf_counter() - begin
        time.sleep(0.02)
    with clock.stage("outer"):  # a stage run twice adds up
        time.sleep(0.01)
    stages = clock.to_dict()
    assert list(stages) == ["outer", "inner", "other"]
    assert 0.05 <= stages["inner"] <= inner + 1e-3
    assert stages["outer"] >= 0.05 - 1e-3
    assert abs(sum(stages.values()) - clock.total()) < 5e-3
    table = stage_table(stages)
    assert table.splitlines()[1].startswith("outer") and table.splitlines()[-1].startswith("total")


def test_a_stage_that_raises_is_still_timed():
    clock = StageClock()
    try:
        with clock.stage("failing"):
            time.sleep(0.01)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with clock.stage("next"):
        pass
    assert clock.seconds["failing"] >= 0.01 and clock.seconds["next"] < 0.01
