"""Peer reputation: decayed counts, the score the placement floor compares, latency."""

from __future__ import annotations

import math

import pytest

from meshpacs.audit.reputation import DEFAULT_FLOOR, Outcome, Reputation

DAY = 86400.0
WEEK = 7 * DAY


def after(outcomes: list[str], start: float = 0.0, step: float = 0.0) -> Reputation:
    record = Reputation(updated_at=start)
    for i, outcome in enumerate(outcomes):
        record = record.recorded(outcome, start + i * step, latency=0.01)
    return record


def test_a_new_peer_scores_one_half_and_two_wrong_answers_take_it_below_the_floor() -> None:
    assert Reputation().score(0) == 0.5
    assert after([Outcome.FAILED]).score(0) > DEFAULT_FLOOR
    assert after([Outcome.FAILED, Outcome.MISSING]).score(0) < DEFAULT_FLOOR
    assert after([Outcome.PASSED] * 10).score(0) > 0.9


def test_counts_halve_every_half_life_and_old_faults_are_forgiven() -> None:
    bad = after([Outcome.FAILED] * 4)
    assert bad.decayed(WEEK).failures == pytest.approx(2.0)
    assert bad.decayed(3 * WEEK).failures == pytest.approx(0.5)
    assert bad.score(0) < DEFAULT_FLOOR < bad.score(4 * WEEK)
    # Passing audits brings it back sooner than waiting does.
    mended = bad.recorded(Outcome.PASSED, DAY).recorded(Outcome.PASSED, DAY)
    assert mended.score(DAY) > bad.score(DAY)


def test_an_evening_offline_is_not_a_lost_disk() -> None:
    offline = after([Outcome.UNREACHABLE] * 4)  # four retries ten minutes apart
    assert offline.failures == pytest.approx(1.0)
    assert offline.score(0) > DEFAULT_FLOOR
    assert offline.latency_seconds is None  # timeouts say nothing of how fast it answers


def test_a_clock_stepping_back_decays_nothing_and_bad_input_is_refused() -> None:
    record = after([Outcome.FAILED], start=1000.0)
    assert record.decayed(0).failures == 1.0 and record.decayed(0).updated_at == 1000.0
    with pytest.raises(ValueError):
        record.recorded("maybe", 1000.0)
    with pytest.raises(ValueError):
        record.decayed(1000.0, half_life=0)
    with pytest.raises(ValueError):
        record.decayed(1000.0, half_life=math.inf)


def test_latency_is_a_moving_mean_of_answered_audits() -> None:
    record = Reputation().recorded(Outcome.PASSED, 0, latency=1.0)
    assert record.latency_seconds == 1.0
    record = record.recorded(Outcome.PASSED, 0, latency=2.0)
    assert 1.0 < (record.latency_seconds or 0) < 2.0
