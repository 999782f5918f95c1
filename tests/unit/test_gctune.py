"""The collector settings stages apply while they loop (`connector.gctune`)."""

from __future__ import annotations

import gc

from connector.gctune import GC_YOUNG_THRESHOLD, CollectorTuning


def test_freeze_now_acts_only_while_applied_and_is_undone_on_exit() -> None:
    assert gc.get_freeze_count() == 0
    tuning = CollectorTuning()
    tuning.freeze_now()
    assert gc.get_freeze_count() == 0  # not applied: nothing frozen behind the stages' back
    with tuning.applied():
        assert gc.get_threshold()[0] >= GC_YOUNG_THRESHOLD
        restored = [[i] for i in range(1000)]  # e.g. state restored after start-up (lists are tracked)
        frozen_before = gc.get_freeze_count()
        tuning.freeze_now()
        assert gc.get_freeze_count() >= frozen_before + len(restored)
    assert gc.get_freeze_count() == 0
