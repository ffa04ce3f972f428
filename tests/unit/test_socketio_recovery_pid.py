"""The recovery pid: bound to the token's user and merchant, checkable by any relay with the key."""

from __future__ import annotations

import pytest

from relay.auth import Claims
from relay.live.recovery import Recovery

ALICE_AT_A = Claims(user_id="alice", merchant_id="mA", expires_at=0)


def test_a_pid_holds_for_the_user_and_merchant_it_was_minted_for_on_any_relay_with_the_key() -> None:
    pid = Recovery.keyed_by("secret").new_pid(ALICE_AT_A)
    assert Recovery.keyed_by("secret").holds(pid, ALICE_AT_A)  # another process, same settings
    assert pid != Recovery.keyed_by("secret").new_pid(ALICE_AT_A)  # every new session gets its own


@pytest.mark.parametrize(
    "claims",
    [
        Claims(user_id="alice", merchant_id="mB", expires_at=0),  # another merchant
        Claims(user_id="bob", merchant_id="mA", expires_at=0),  # another user of the merchant
    ],
)
def test_a_pid_does_not_hold_for_anyone_else(claims: Claims) -> None:
    pid = Recovery.keyed_by("secret").new_pid(ALICE_AT_A)
    assert not Recovery.keyed_by("secret").holds(pid, claims)


@pytest.mark.parametrize("pid", [None, 42, "", "forged", "A" * 32, "é" * 32, "=" * 32, "AAAA" * 7 + "!!!!"])
def test_forged_and_malformed_pids_do_not_hold(pid: object) -> None:
    assert not Recovery.keyed_by("secret").holds(pid, ALICE_AT_A)


def test_a_pid_minted_with_another_key_does_not_hold() -> None:
    pid = Recovery.keyed_by("another deployment").new_pid(ALICE_AT_A)
    assert not Recovery.keyed_by("secret").holds(pid, ALICE_AT_A)


def test_a_pid_tells_user_and_merchant_apart_whatever_characters_they_hold() -> None:
    recovery = Recovery.keyed_by("secret")
    pid = recovery.new_pid(Claims(user_id="a\x00b", merchant_id="c", expires_at=0))
    assert not recovery.holds(pid, Claims(user_id="a", merchant_id="b\x00c", expires_at=0))
