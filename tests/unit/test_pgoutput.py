"""pgoutput protocol 1 as PostgreSQL 16 wrote it (tests/unit/pgoutput_pg16.txt holds the
bytes of a real slot; how they were made is at its top), and wal mode's use of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.pgoutput import (
    UNCHANGED,
    Begin,
    Change,
    Commit,
    ProtocolError,
    Relation,
    Skipped,
    Truncate,
    lsn_text,
    lsn_value,
    parse,
)
from relay.wal import decode, row_literal

BIG = "x" * 2100


def captured() -> list[tuple[int, bytes]]:
    lines = (Path(__file__).parent / "pgoutput_pg16.txt").read_text().splitlines()
    rows = (line.split() for line in lines if not line.startswith("#"))
    return [(lsn_value(lsn), bytes.fromhex(data)) for lsn, data in rows]


def test_every_message_of_a_real_slot_parses() -> None:
    messages = [parse(data) for _, data in captured()]
    kinds = [type(m).__name__ if not isinstance(m, Skipped) else f"Skipped {m.kind}" for m in messages]
    assert kinds == [
        *("Begin", "Skipped Y", "Relation", "Change", "Commit"),  # INSERT t (its enum type first)
        *("Begin", "Change", "Commit"),  # UPDATE t
        *("Begin", "Relation", "Change", "Commit"),  # INSERT k
        *("Begin", "Change", "Commit"),  # UPDATE k
        *("Begin", "Change", "Commit"),  # DELETE k
        *("Begin", "Change", "Commit"),  # DELETE t
        *("Begin", "Relation", "Skipped Y", "Relation", "Truncate", "Commit"),
        *("Begin", "Skipped O", "Relation", "Change", "Commit"),  # from replication origin elsewhere
    ]


def test_relations_rows_and_transactions_carry_what_postgresql_sent() -> None:
    messages = [parse(data) for _, data in captured()]
    t = messages[2]
    assert isinstance(t, Relation)
    assert (t.namespace, t.name, t.columns) == ("public", "t", ("id", "name", "big", "m", "n"))
    begin, commit = messages[0], messages[4]
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
    assert commit.end_lsn == captured()[4][0]  # a commit's row has its end LSN
    inserted = messages[3]
    assert inserted == Change("INSERT", t.relid, ("1", 'a "q" é', BIG, "ok", None), None)
    updated = messages[6]  # REPLICA IDENTITY FULL: the whole old row; the TOASTed value not resent
    assert updated == Change(
        "UPDATE", t.relid, ("1", None, UNCHANGED, "ok", None), ("1", 'a "q" é', BIG, "ok", None)
    )
    k = messages[9]
    assert isinstance(k, Relation) and k.columns == ("id", "v")
    assert messages[13] == Change("UPDATE", k.relid, ("1", "y"), None)  # default identity: no old row
    assert messages[16] == Change("DELETE", k.relid, None, ("1", None))  # the key only
    assert messages[19] == Change("DELETE", t.relid, None, ("1", None, BIG, "ok", None))
    truncated = messages[25]
    assert isinstance(truncated, Truncate) and set(truncated.relids) == {t.relid, k.relid}


def test_decoding_numbers_changes_and_takes_the_last_commit() -> None:
    decoded = decode(captured())
    assert [c.op for c, _, _, _ in decoded.changes] == [
        "INSERT",
        "UPDATE",
        "INSERT",
        "UPDATE",
        "DELETE",
        "DELETE",
        "INSERT",
    ]
    assert all(part == 0 for _, _, part, _ in decoded.changes)  # one change per WAL record here
    assert decoded.last_commit == captured()[-1][0]
    many = [captured()[2], captured()[3], captured()[3]]  # a COPY writes rows in one record: same LSN
    assert [part for _, _, part, _ in decode(many).changes] == [0, 1]


def test_a_row_literal_quotes_every_value_and_leaves_nulls_and_missing_columns_empty() -> None:
    values = ('say "hi"', None, "back\\slash", "", UNCHANGED)
    at = [0, 1, 2, 3, 4, None]  # the last column was added since: the row lacks it
    assert row_literal(values, at) == '("say \\"hi\\"",,"back\\\\slash","",,)'
    # An unchanged TOASTed value of an UPDATE comes from the old row.
    assert row_literal(values, at, ("", "", "", "", "old")) == '("say \\"hi\\"",,"back\\\\slash","","old",)'


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Z",
        b"B\x00\x00",
        b"I\x00\x00@\x05X",
        b"R\x00\x00@\x05public",
        b"I\x00\x00@\x05N\x00\x01t\x00\x00\x00\x09ab",
    ],
    ids=["empty", "unknown type", "short field", "no new row", "unterminated string", "value past the end"],
)
def test_anything_else_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(data)


def test_lsns_read_and_write_as_postgresql_does() -> None:
    assert lsn_text(lsn_value("16/B374D848")) == "16/B374D848"
    assert lsn_value("0/0") == 0
