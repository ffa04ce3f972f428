"""The retry schedule: units, jitter bounds, exhaustion and Retry-After."""

from __future__ import annotations

import random

import pytest

from relay.retry import MAX_RETRY_AFTER, RetrySchedule, parse_delay


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("5", 5), ("5s", 5), ("250ms", 0.25), ("1.5m", 90), ("2h", 7200), ("1d", 86400), (".5s", 0.5)],
)
def test_delay_units(text: str, seconds: float) -> None:
    assert parse_delay(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-1s", "s", "1,2", "five"])
def test_bad_delays_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_delay(text)


def test_default_schedule_has_eight_attempts_and_then_gives_up() -> None:
    schedule = RetrySchedule.parse("0,5s,5m,30m,2h,5h,10h,10h")
    assert schedule.max_attempts == 8
    assert schedule.delay_before(1) == 0
    rng = random.Random(1)
    for attempt, base in [(2, 5), (3, 300), (8, 36000)]:
        delay = schedule.delay_before(attempt, rng=rng)
        assert delay is not None and base <= delay <= base * 1.1
    assert schedule.delay_before(9) is None
    assert schedule.next_delay(8) is None


def test_retry_after_raises_the_delay_but_is_capped_at_a_day() -> None:
    schedule = RetrySchedule((0, 1, 1), jitter=0)
    assert schedule.next_delay(1, retry_after=30) == 30
    assert schedule.next_delay(1, retry_after=0.5) == 1
    assert schedule.next_delay(1, retry_after=10 * MAX_RETRY_AFTER) == MAX_RETRY_AFTER


@pytest.mark.parametrize("text", ["", ",", "0,,5s", " "])
def test_empty_elements_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        RetrySchedule.parse(text)
