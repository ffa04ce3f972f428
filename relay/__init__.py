"""Relay: real-time booking notifications from PostgreSQL LISTEN/NOTIFY."""

from __future__ import annotations

__version__ = "0.1.0"
