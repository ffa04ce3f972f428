"""Delivery channels: one module per target kind, all behind ``base.Channel``."""

from __future__ import annotations
