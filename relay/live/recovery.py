"""Socket.IO connection state recovery on Relay's durable cursors.

socket.io 4.6 added it to the protocol: the server's CONNECT acknowledgement carries a
``pid``, every event carries an offset as its last argument, and socket.io-client sends
both back in its next CONNECT (``{"pid","offset",...auth}``). The Node server keeps the
missed packets in one process's memory; Relay's offsets are event cursors (positions in
``relay.events``), so any relay process, restarted or not, replays what a client missed.

A pid is ``base64url(nonce ‖ HMAC(key, nonce ‖ JSON [user, merchant]))``: any process holding
the key checks it without shared state, and it is bound to the token's user and
merchant. It is not a credential: every CONNECT still needs a valid token, and replay
reads only the token's merchant's events. A client whose pid does not hold, or whose
offset is not a cursor between the oldest retained event and the last sequenced one,
gets a new connection (a fresh pid, ``socket.recovered === false``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets

from relay.auth import Claims
from relay.events import decode_cursor
from relay.live.websocket import DB_ERRORS
from relay.store import Store

logger = logging.getLogger(__name__)

NONCE = 9
MAC = 15
KEY_CONTEXT = b"relay socket.io recovery pid\x00"


class Recovery:
    """Mints and checks pids with one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def keyed_by(cls, material: str) -> Recovery:
        """A key derived from the relay's JWT key (the same on every process of a deployment)."""
        return cls(hashlib.sha256(KEY_CONTEXT + material.encode()).digest())

    def _mac(self, nonce: bytes, claims: Claims) -> bytes:
        subject = json.dumps([claims.user_id, claims.merchant_id]).encode()
        return hmac.new(self._key, nonce + subject, hashlib.sha256).digest()[:MAC]

    def new_pid(self, claims: Claims) -> str:
        nonce = secrets.token_bytes(NONCE)
        return base64.urlsafe_b64encode(nonce + self._mac(nonce, claims)).decode()

    def holds(self, pid: object, claims: Claims) -> bool:
        """True when ``pid`` was minted by a relay with this key for the token's user and merchant."""
        if not isinstance(pid, str) or len(pid) != (NONCE + MAC) * 4 // 3:
            return False
        try:
            raw = base64.urlsafe_b64decode(pid.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return False
        nonce, mac = raw[:NONCE], raw[NONCE:]
        return hmac.compare_digest(mac, self._mac(nonce, claims))

    async def resumable(self, store: Store, claims: Claims, auth: object) -> int | None:
        """The position to replay after when a CONNECT's ``auth`` (``{"pid","offset",...}``)
        recovers a session of the token's user and merchant, else None (a new session)."""
        if not isinstance(auth, dict) or not self.holds(auth.get("pid"), claims):
            return None
        offset = auth.get("offset")
        try:
            after = decode_cursor(offset) if isinstance(offset, str) else None
            if after is None:
                return None
            oldest, last = await store.oldest_position(), await store.position()
        except ValueError:
            return None
        except DB_ERRORS as exc:
            logger.warning("Socket.IO: cannot check a recovery (%s); a new session", type(exc).__name__)
            return None
        return after if oldest <= after <= last else None
