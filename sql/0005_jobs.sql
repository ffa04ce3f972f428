-- Bookkeeping for the scheduler's shared jobs: when each last started and how it ended.
-- A job runs only when its last start is old enough, so with several relay processes a
-- job runs once per interval in total, not once per process; an advisory lock held for
-- the run keeps it from overlapping itself.

CREATE TABLE relay.jobs (
    name             text PRIMARY KEY,
    last_started_at  timestamptz NOT NULL,
    last_finished_at timestamptz,
    last_error       text,
    runs             bigint      NOT NULL DEFAULT 0,
    failures         bigint      NOT NULL DEFAULT 0
);
