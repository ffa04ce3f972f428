"""Shortened chaos runs inside `make test` (the full one is `make chaos`), with two sources:
"Booking" and an attached billing.payments; one in each capture mode."""

from __future__ import annotations

import pytest

from tests.e2e.chaos import ChaosConfig, run_chaos


@pytest.mark.timeout(240)
async def test_nothing_is_lost_while_everything_breaks() -> None:
    report = await run_chaos(ChaosConfig(changes=600, drain_timeout=90))
    print("\n".join(report.lines()))
    assert report.problems == []
    assert report.events_committed >= 570  # a change cut off mid-commit may not count
    assert set(report.per_source_events) == {"booking", "payment"}  # both sources in the mix
    assert min(report.per_source_events.values()) > 100
    # Kills land every ~0.5 s while the writers run: fewer on a loaded machine, never none.
    assert report.listener_kills >= 3
    assert report.ws_resumes >= 3


@pytest.mark.timeout(240)
async def test_nothing_is_lost_while_everything_breaks_in_poll_mode() -> None:
    """No NOTIFY from the writers: the relays' pollers (killed too, and one relay SIGKILLed)
    sequence every event and wake the other process."""
    report = await run_chaos(ChaosConfig(changes=400, drain_timeout=90, capture="poll", seed=2))
    print("\n".join(report.lines()))
    assert report.problems == []
    assert report.events_committed >= 380
    assert min(report.per_source_events.values()) > 60
    assert report.poller_kills >= 3
    assert report.ws_resumes >= 3


@pytest.mark.timeout(240)
async def test_nothing_is_lost_while_everything_breaks_in_wal_mode() -> None:
    """No trigger: the relay process reading the replication slot is the one SIGKILLed, the
    slot readers' backends are killed too, and PostgreSQL restarts under the slot."""
    report = await run_chaos(ChaosConfig(changes=400, drain_timeout=90, capture="wal", seed=3))
    print("\n".join(report.lines()))
    assert report.problems == []
    assert report.changes_acknowledged == 400  # each of them an event (report.problems)
    assert min(report.per_source_events.values()) > 60
    assert report.poller_kills >= 1
