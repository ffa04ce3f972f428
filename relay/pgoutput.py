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


def _ended(size: int) -> ProtocolError:
    return ProtocolError(f"message ends after {size} bytes, inside a field")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            raise _ended(len(self.data))
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


_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_U16 = struct.Struct("!H")
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!BQQ")
_N, _K, _O, _T, _NULL, _TOAST = (ord(c) for c in "NKOtnu")


def _tuple(data: bytes, at: int) -> tuple[Tuple, int]:
    """A row's values from offset ``at`` (the column count first), and the offset after them."""
    end = len(data)
    if at + 2 > end:
        raise _ended(end)
    (count,) = _U16.unpack_from(data, at)
    at += 2
    values: list[Value] = []
    append = values.append
    for _ in range(count):
        if at >= end:
            raise _ended(end)
        kind = data[at]
        at += 1
        if kind == _T:
            if at + 4 > end:
                raise _ended(end)
            (size,) = _I32.unpack_from(data, at)
            at += 4
            if size < 0 or at + size > end:
                raise ProtocolError("column value longer than the message")
            append(data[at : at + size].decode("utf-8"))
            at += size
        elif kind == _NULL:
            append(None)
        elif kind == _TOAST:
            append(UNCHANGED)
        else:
            raise ProtocolError(f"column kind {chr(kind)!r} (binary values are not asked for)")
    return tuple(values), at


def _row_change(data: bytes, op: Literal["INSERT", "UPDATE", "DELETE"]) -> Change:
    """An INSERT, UPDATE or DELETE message: the row(s) after the relation's oid."""
    if len(data) < 6:
        raise _ended(len(data))
    (relid,) = _U32.unpack_from(data, 1)
    marker, at = data[5], 6
    if op == "INSERT":
        if marker != _N:
            raise ProtocolError("INSERT without its new row")
        return Change(op, relid, _tuple(data, at)[0], None)
    if op == "DELETE":
        if marker not in (_K, _O):
            raise ProtocolError("DELETE without its old row")
        return Change(op, relid, None, _tuple(data, at)[0])
    old = None
    if marker in (_K, _O):
        old, at = _tuple(data, at)
        if at >= len(data):
            raise _ended(len(data))
        marker, at = data[at], at + 1
    if marker != _N:
        raise ProtocolError("UPDATE without its new row")
    return Change(op, relid, _tuple(data, at)[0], old)


def parse(data: bytes) -> Message:
    """One message; ProtocolError for anything else.

    The messages of every change (Begin, the row, Commit) are read straight off the bytes:
    the wal reader parses three per change, and its CPU is the server's too.
    """
    if not data:
        raise ProtocolError("empty message")
    data = bytes(data)
    kind = data[0]
    try:
        if kind == 0x49:  # I
            return _row_change(data, "INSERT")
        if kind == 0x55:  # U
            return _row_change(data, "UPDATE")
        if kind == 0x44:  # D
            return _row_change(data, "DELETE")
        if kind == 0x42:  # B
            final_lsn, _timestamp, xid = _BEGIN.unpack_from(data, 1)
            return Begin(final_lsn, xid)
        if kind == 0x43:  # C
            _flags, commit_lsn, end_lsn = _COMMIT.unpack_from(data, 1)
            return Commit(commit_lsn, end_lsn)
    except struct.error:
        raise _ended(len(data)) from None
    r = _Reader(data)
    kind_char = r.byte()
    if kind_char == "R":
        relid, namespace, name = r.take("!I"), r.string(), r.string()
        r.take("!B")  # replica identity setting
        columns = []
        for _ in range(r.take("!H")):
            r.take("!B")  # flags: part of the key
            columns.append(r.string())
            r.take("!I")  # type oid
            r.take("!i")  # type modifier
        return Relation(relid, namespace, name, tuple(columns))
    if kind_char == "T":
        count = r.take("!I")
        r.take("!B")  # options: CASCADE, RESTART IDENTITY
        return Truncate(tuple(r.take("!I") for _ in range(count)))
    if kind_char in ("Y", "O", "M"):
        return Skipped(kind_char)
    raise ProtocolError(f"unknown message type {kind_char!r}")


def lsn_text(lsn: int) -> str:
    """An LSN as PostgreSQL writes it (``16/B374D848``)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_value(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)
