"""What every delivery channel (webhook, push) offers the dispatcher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from relay.events import Event

OutcomeKind = Literal["success", "retry", "permanent", "gone"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One row of ``relay.deliveries``: an event for one target."""

    id: int
    event_id: int
    channel: str
    target_id: int
    merchant_id: str | None
    attempts: int  # attempts made before this one
    destination: str | None = None  # host[:port] of the target's URL (per-host limits)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt, decided in one place per channel.

    ``success``: done. ``retry``: try again on the schedule (no sooner than
    ``retry_after`` seconds). ``permanent``: give up on this delivery. ``gone``: give
    up and mark the target itself dead (webhook 410, push 404/410).
    """

    kind: OutcomeKind
    status: int | None = None
    detail: str = ""
    retry_after: float | None = None

    @classmethod
    def success(cls, status: int | None = None) -> Outcome:
        return cls("success", status)


class Channel(Protocol):
    """A kind of target. ``name`` is the value of ``relay.deliveries.channel``."""

    name: ClassVar[str]
    # INSERT INTO relay.deliveries ... for the events with $1 < position <= $2,
    # one row per matching target; ON CONFLICT DO NOTHING.
    plan_sql: ClassVar[str]

    async def send(self, delivery: Delivery, event: Event) -> Outcome:
        """Make one attempt and say how it went.

        Raise a database error (``relay.db.TRANSIENT_ERRORS`` or ``asyncpg.PostgresError``)
        only before anything was sent (e.g. while loading the target): the dispatcher
        then hands the delivery back without using up an attempt. Any other exception
        is logged and counts as a failed attempt.
        """
        ...

    async def target_gone(self, delivery: Delivery, outcome: Outcome) -> None:
        """Record that the target is dead (called for ``gone`` outcomes)."""


JSON = dict[str, Any]
