"""The paired bootstrap over searchers that says whether a difference in recall is a difference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.significance import MIN_GROUPS, paired_bootstrap
from models.evaluate import EvalSessions, ranking_metrics, session_recalls


def test_a_clear_gain_is_separated_and_a_coin_flip_is_a_tie():
    rng = np.random.default_rng(0)
    searchers = np.repeat(np.arange(200), 10)
    base = rng.random(2000) < 0.2
    better = base | (rng.random(2000) < 0.2)  # about +80% hits
    gain = paired_bootstrap(better, base, searchers)
    assert gain.low > 0.3 and not gain.tie
    assert gain.low <= gain.estimate <= gain.high and gain.groups == 200
    flip = rng.random(2000) < 0.2  # same rate, independent draws
    tie = paired_bootstrap(flip, base, searchers)
    assert tie.tie and tie.low < 0 < tie.high
    assert str(gain).startswith("+") and "[" in str(gain) and "tie" not in str(gain)
    assert str(tie).endswith(" (tie)")
    from bench.significance import RelativeDifference

    # a bound that rounds to 0% keeps a decimal, so that its side of 0 shows
    assert str(RelativeDifference(0.2, 0.003, 0.45, 100, 0.95)) == "+20% [+0.3%, +45%]"
    assert str(RelativeDifference(0.2, -0.002, 0.45, 100, 0.95)) == "+20% [-0.2%, +45%] (tie)"


def test_resampling_searchers_widens_the_interval_when_their_sessions_agree():
    """Sessions of one searcher that all hit or all miss carry one searcher's worth of evidence: the
    interval over searchers is wider than the one that treats the sessions as independent."""
    rng = np.random.default_rng(1)
    searchers = np.repeat(np.arange(100), 20)
    per_searcher = rng.random(100)
    a = np.repeat(per_searcher < 0.3, 20).astype(float)
    b = np.repeat(per_searcher < 0.25, 20).astype(float)
    by_searcher = paired_bootstrap(a, b, searchers)
    by_session = paired_bootstrap(a, b, None)
    assert by_searcher.estimate == pytest.approx(by_session.estimate)
    assert by_searcher.high - by_searcher.low > 2 * (by_session.high - by_session.low)
    assert by_searcher.groups == 100 and by_session.groups == 2000


def test_too_few_searchers_fall_back_to_sessions_and_bad_input_is_refused():
    a, b = np.ones(100), np.full(100, 0.5)
    one_searcher = paired_bootstrap(a, b, np.zeros(100))
    assert one_searcher.groups == 100 and one_searcher.estimate == pytest.approx(1.0)
    assert paired_bootstrap(a, b, np.arange(100) % (MIN_GROUPS - 1)).groups == 100
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap(a, b[:50])
    with pytest.raises(ValueError, match="no hit"):
        paired_bootstrap(a, np.zeros(100))
    with pytest.raises(ValueError, match="group labels"):
        paired_bootstrap(a, b, np.zeros(10))


def test_session_recalls_are_what_the_metrics_average():
    sessions = EvalSessions(
        queries=pd.DataFrame({"searcher_id": ["u1", "u2", "u3"]}),
        targets=[np.array(["d1"]), np.array(["d2", "d3"]), np.array(["d9"])],
        graded=[(np.array(["d1"]), np.ones(1)), (np.array(["d2", "d3"]), np.ones(2)),
                (np.zeros(0, object), np.zeros(0))],
    )
    doc_ids = ["d1", "d2", "d3", "d4"]
    top = np.array([[0, 1], [2, 3], [3, -1]])
    per = session_recalls(top, doc_ids, sessions, (1, 2))
    assert per[1].tolist() == [1.0, 0.5, 0.0] and per[2].tolist() == [1.0, 0.5, 0.0]
    m = ranking_metrics(top, doc_ids, sessions, (1, 2))
    assert m["recall@1"] == pytest.approx(per[1].mean()) and m["recall@2"] == pytest.approx(per[2].mean())
