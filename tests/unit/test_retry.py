"""The retry schedule (units, jitter bounds, exhaustion) and the one Retry-After parser."""

from __future__ import annotations

import email.utils
import random
import time

import pytest

from relay.retry import MAX_RETRY_AFTER, RetrySchedule, parse_delay, parse_retry_after


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


def test_retry_after_accepts_seconds_and_http_dates_and_caps_at_24h() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("999999999") == 24 * 3600
    when = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(when, now=1_000_000) == 30.0
    assert parse_retry_after(when, now=2_000_000) == 0.0  # in the past: no extra wait


def test_retry_after_as_an_http_date() -> None:
    now = time.time()
    value = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(value, now) == pytest.approx(90, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now) == 0.0
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("value", ["\u00b2", "1\u0662", "Sun, 31 Dec 99999 23:59:59 GMT", "Mon, 32 Foo 2026"])
def test_a_hostile_retry_after_is_ignored_not_an_error(value: str) -> None:
    """Digits that are not ASCII, and dates no calendar holds, read as no Retry-After."""
    assert parse_retry_after(value) is None
