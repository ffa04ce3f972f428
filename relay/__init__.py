"""Relay: real-time notifications of row changes (bookings and any attached table) from PostgreSQL."""

from __future__ import annotations

__version__ = "0.1.0"
