"""Where deliveries go: the destination kinds (webhook, push) and what each offers the dispatcher.

A *destination* is one webhook endpoint or one push subscription; its *kind* is the
value of ``relay.deliveries.channel`` (a column name kept from before this word).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from relay.events import Event

KINDS: tuple[str, ...] = ("webhook", "push")

OutcomeKind = Literal["success", "retry", "permanent", "gone"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One row of ``relay.deliveries``: an event for one destination."""

    id: int
    event_id: int
    kind: str
    destination_id: int
    merchant_id: str | None
    attempts: int  # attempts made before this one
    # host[:port] of the destination's URL, for the per-host limits (the column
    # relay.deliveries.destination); None for rows planned before it existed
    host: str | None = None

    @property
    def log(self) -> dict[str, object]:
        """The stable ``extra=`` keys of every log line about this delivery."""
        return {
            "delivery_id": self.id,
            "event_id": self.event_id,
            "destination": self.kind,
            "merchant_id": self.merchant_id,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt, decided in one place per destination kind.

    ``success``: done. ``retry``: try again on the schedule (no sooner than
    ``retry_after`` seconds). ``permanent``: give up on this delivery. ``gone``: give
    up and mark the destination itself dead (webhook 410, push 404/410).
    """

    kind: OutcomeKind
    status: int | None = None
    detail: str = ""
    retry_after: float | None = None

    @classmethod
    def success(cls, status: int | None = None) -> Outcome:
        return cls("success", status)


class Destination(Protocol):
    """One kind of destination; ``kind`` is one of ``KINDS`` (its deliveries are planned by
    the store's ``<kind>_plan`` query)."""

    kind: ClassVar[str]

    async def send(self, delivery: Delivery, event: Event) -> Outcome:
        """Make one attempt and say how it went.

        Raise a database error (``relay.db.TRANSIENT_ERRORS`` or ``asyncpg.PostgresError``)
        only before anything was sent (e.g. while loading the destination): the dispatcher
        then hands the delivery back without using up an attempt. Any other exception
        is logged and counts as a failed attempt.
        """
        ...

    async def gone(self, delivery: Delivery, outcome: Outcome) -> None:
        """Record that the destination is dead (called for ``gone`` outcomes)."""
