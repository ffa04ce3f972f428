-- The host (and port) a delivery goes to, copied from the target's URL when the delivery
-- is planned, so the dispatcher can limit how many sends one destination holds before it
-- claims them. NULL (rows planned before this column existed): no per-host limit.

ALTER TABLE relay.deliveries ADD COLUMN destination text;
