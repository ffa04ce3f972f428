-- The claim reads a kind's due deliveries in next_attempt_at order and stops after a few
-- times its batch: with the kind first, the index hands them over in that order however
-- long the backlog (the index on next_attempt_at alone left the planner scanning and
-- sorting the whole backlog of a burst, ~5,000 rows, on every claim).
CREATE INDEX deliveries_due_kind_idx ON relay.deliveries (channel, next_attempt_at)
    WHERE state IN ('pending', 'sending');
