-- Presence: which users of a merchant have a live connection, on which relay process.
-- Unlogged: presence is rebuilt from live connections, so it need not survive a crash
-- of PostgreSQL (which empties unlogged tables; every process then registers again) and
-- its writes skip the WAL.
--
-- Each process registers a random id with a lease it renews every few seconds; the rows
-- of a process whose lease ran out (it died without saying goodbye) are deleted by any
-- other process, and with them, by the foreign key, its connection counts. ``slot`` names
-- where a process serves (host name and HTTP port): a process starting in the slot of one
-- that died removes that one's counts at once instead of waiting for its lease.

CREATE UNLOGGED TABLE relay.presence_processes (
    process_id  uuid        PRIMARY KEY,
    lease_until timestamptz NOT NULL,
    slot        text
);

CREATE UNLOGGED TABLE relay.presence (
    merchant_id text    NOT NULL,
    user_id     text    NOT NULL,
    process_id  uuid    NOT NULL REFERENCES relay.presence_processes ON DELETE CASCADE,
    connections integer NOT NULL CHECK (connections > 0),
    PRIMARY KEY (merchant_id, user_id, process_id)
);

CREATE INDEX presence_process ON relay.presence (process_id);
