"""Operations: schedule decisions, store faults and crash leftovers, each a failure an operator met."""

from __future__ import annotations

from datetime import date

import pytest


def test_retrain_decision_says_why_and_never_means_never():
    from flows.nightly import NoModelError, retrain_decision

    sunday, monday = date(2026, 11, 22), date(2026, 11, 23)
    assert retrain_decision("auto", True, sunday, 6) == (True, "weekly retraining day (Sunday)")
    assert retrain_decision("auto", True, monday, 6)[0] is False
    assert retrain_decision("auto", False, monday, 6) == (True, "no registered model yet")
    assert retrain_decision("always", True, monday, 6) == (True, "retrain=always")
    assert retrain_decision("never", True, sunday, 6) == (False, "retrain=never")
    with pytest.raises(NoModelError, match="ebr train"):
        retrain_decision("never", False, sunday, 6)  # it used to train anyway, and not say so


def test_nightly_with_retrain_never_and_no_model_stops_before_any_work(home, prefect_harness):
    from flows.nightly import NoModelError, nightly

    with pytest.raises(NoModelError):
        nightly(dataset="no-model-here", start_date=date(2024, 1, 1), end_date=date(2024, 1, 1), retrain="never")
    assert not (home / "features" / "no-model-here").exists()  # nothing was materialized
