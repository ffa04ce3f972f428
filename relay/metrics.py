"""Every Prometheus metric Relay exports, in one registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

events_received = Counter(
    "relay_events_received_total",
    "NOTIFY messages received on the event channels of the sources (booking_created, ...)",
    ["channel"],
    registry=REGISTRY,
)
notifications_malformed = Counter(
    "relay_notifications_malformed_total",
    "NOTIFY payloads refused because they break the contract",
    registry=REGISTRY,
)
listener_reconnects = Counter(
    "relay_listener_reconnects_total",
    "Times the LISTEN connection was re-established after a loss",
    registry=REGISTRY,
)
listener_disconnected_seconds = Counter(
    "relay_listener_disconnected_seconds_total",
    "Seconds the LISTEN connection spent down",
    registry=REGISTRY,
)
listener_connected = Gauge(
    "relay_listener_connected",
    "1 while the LISTEN connection is up, else 0 (set when /metrics is read)",
    registry=REGISTRY,
)
events_handed_on = Counter(
    "relay_events_handed_on_total",
    "Events handed to the live consumers, in commit order",
    registry=REGISTRY,
)
events_recovered = Counter(
    "relay_events_recovered_total",
    "Events found by reconciliation that no NOTIFY had announced to this process",
    registry=REGISTRY,
)
# The ``channel`` label of the delivery metrics holds the destination kind (webhook, push):
# the label name is part of the contract (DESIGN.md).
deliveries = Counter(
    "relay_deliveries_total",
    "Delivery attempts by destination kind and outcome",
    ["channel", "outcome"],
    registry=REGISTRY,
)
delivery_seconds = Histogram(
    "relay_delivery_seconds",
    "Time from event creation to successful delivery",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
    registry=REGISTRY,
)
deliveries_pending = Gauge(
    "relay_deliveries_pending",
    "Deliveries waiting to be sent, by destination kind and state",
    ["channel", "state"],
    registry=REGISTRY,
)
ws_connections = Gauge(
    "relay_ws_connections",
    "Open live connections, by transport",
    ["transport"],
    registry=REGISTRY,
)
socketio_sessions = Counter(
    "relay_socketio_sessions_total",
    "Socket.IO sessions connected: new (no pid), recovered, not_recovered (its pid or offset did not hold)",
    ["outcome"],
    registry=REGISTRY,
)
live_refused = Counter(
    "relay_live_refused_total",
    "Live-connection input refused: malformed packets, oversized requests, no valid token in time",
    ["transport", "reason"],
    registry=REGISTRY,
)
notify_queue_usage = Gauge(
    "relay_notify_queue_usage",
    "pg_notification_queue_usage() of the database (0..1)",
    registry=REGISTRY,
)
job_failures = Counter(
    "relay_job_failures_total",
    "Scheduled jobs that raised",
    ["job"],
    registry=REGISTRY,
)
capture_mode = Gauge(
    "relay_capture_mode",
    "1 for the capture mode this process follows (notify, poll, wal), 0 for the others",
    ["mode"],
    registry=REGISTRY,
)
poller_leader = Gauge(
    "relay_poller_leader",
    "1 while this process is the one polling for events (poll mode), else 0",
    registry=REGISTRY,
)
poll_seconds = Histogram(
    "relay_poll_seconds",
    "Round trip of one poll pass (poll mode), by result: empty, or sequenced",
    ["result"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
poll_events = Counter(
    "relay_poll_events_total",
    "Events sequenced by this process's poller",
    registry=REGISTRY,
)
wal_leader = Gauge(
    "relay_wal_leader",
    "1 while this process is the one reading the replication slot (wal mode), else 0",
    registry=REGISTRY,
)
wal_events = Counter(
    "relay_wal_events_total",
    "Events recorded from the replication slot by this process (wal mode)",
    registry=REGISTRY,
)
wal_slot_lag_bytes = Gauge(
    "relay_wal_slot_lag_bytes",
    "WAL written since what the replication slot relay was read up to (wal mode; set when /metrics is read)",
    registry=REGISTRY,
)
wal_slot_retained_bytes = Gauge(
    "relay_wal_slot_retained_bytes",
    "WAL the replication slot relay keeps from being removed (wal mode; set when /metrics is read)",
    registry=REGISTRY,
)
wal_slot_lost = Gauge(
    "relay_wal_slot_lost",
    "1 while the replication slot relay is invalidated (wal_status lost) or missing in wal mode, else 0",
    registry=REGISTRY,
)
