"""The pgoutput logical replication protocol, version 1: the messages wal mode reads from the slot.

Each row of ``pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', ...)`` holds one
message (PostgreSQL's "Logical Replication Message Formats"). Integers are big-endian,
strings NUL-terminated; column values come as their type's text output (``t``), NULL
(``n``), or "unchanged TOASTed value, not sent" (``u``, only in the new row of an UPDATE).
Only what Relay uses is kept; ``Type`` and ``Origin`` are read past.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Literal


class Unchanged(enum.Enum):
    """An UPDATE's unchanged TOASTed value, not sent (its text could be anything, even "u")."""

    TOAST = "u"


UNCHANGED = Unchanged.TOAST
# A column's value: its text, None for NULL, or UNCHANGED.
Value = str | None | Literal[Unchanged.TOAST]
Tuple = tuple[Value, ...]


class ProtocolError(ValueError):
    """A message that is not pgoutput protocol version 1."""


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int


@dataclass(frozen=True, slots=True)
class Relation:
    relid: int
    namespace: str
    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Change:
    """An INSERT (``new`` only), UPDATE (``old`` when the replica identity sent it) or DELETE."""

    op: Literal["INSERT", "UPDATE", "DELETE"]
    relid: int
    new: Tuple | None
    old: Tuple | None


@dataclass(frozen=True, slots=True)
class Truncate:
    relids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Skipped:
    """A message Relay has no use for (Type, Origin, logical decoding messages)."""

    kind: str


Message = Begin | Commit | Relation | Change | Truncate | Skipped


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            raise ProtocolError(f"message ends after {len(self.data)} bytes, inside a field")
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return int(value)

    def byte(self) -> str:
        return chr(self.take("!B"))

    def string(self) -> str:
        end = self.data.find(b"\0", self.at)
        if end < 0:
            raise ProtocolError("string without its terminating NUL")
        text = self.data[self.at : end].decode("utf-8")
        self.at = end + 1
        return text

    def raw(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise ProtocolError("column value longer than the message")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def tuple(self) -> Tuple:
        values: list[Value] = []
        for _ in range(self.take("!H")):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind == "t":
                values.append(self.raw(self.take("!i")).decode("utf-8"))
            else:
                raise ProtocolError(f"column kind {kind!r} (binary values are not asked for)")
        return tuple(values)


def parse(data: bytes) -> Message:
    """One message; ProtocolError for anything else."""
    if not data:
        raise ProtocolError("empty message")
    r = _Reader(bytes(data))
    kind = r.byte()
    if kind == "B":
        final_lsn = r.take("!Q")
        r.take("!q")  # commit timestamp
        return Begin(final_lsn, r.take("!I"))
    if kind == "C":
        r.take("!B")  # flags
        return Commit(r.take("!Q"), r.take("!Q"))
    if kind == "R":
        relid, namespace, name = r.take("!I"), r.string(), r.string()
        r.take("!B")  # replica identity setting
        columns = []
        for _ in range(r.take("!H")):
            r.take("!B")  # flags: part of the key
            columns.append(r.string())
            r.take("!I")  # type oid
            r.take("!i")  # type modifier
        return Relation(relid, namespace, name, tuple(columns))
    if kind == "I":
        relid = r.take("!I")
        if r.byte() != "N":
            raise ProtocolError("INSERT without its new row")
        return Change("INSERT", relid, r.tuple(), None)
    if kind == "U":
        relid = r.take("!I")
        old = None
        marker = r.byte()
        if marker in ("K", "O"):
            old = r.tuple()
            marker = r.byte()
        if marker != "N":
            raise ProtocolError("UPDATE without its new row")
        return Change("UPDATE", relid, r.tuple(), old)
    if kind == "D":
        relid = r.take("!I")
        if r.byte() not in ("K", "O"):
            raise ProtocolError("DELETE without its old row")
        return Change("DELETE", relid, None, r.tuple())
    if kind == "T":
        count = r.take("!I")
        r.take("!B")  # options: CASCADE, RESTART IDENTITY
        return Truncate(tuple(r.take("!I") for _ in range(count)))
    if kind in ("Y", "O", "M"):
        return Skipped(kind)
    raise ProtocolError(f"unknown message type {kind!r}")


def lsn_text(lsn: int) -> str:
    """An LSN as PostgreSQL writes it (``16/B374D848``)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_value(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)
