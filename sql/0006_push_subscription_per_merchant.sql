-- A push subscription belongs to one merchant: the same browser endpoint may be stored
-- once per merchant (a staff member working for two merchants in one browser gets a row
-- for each), and another merchant posting it creates its own row instead of taking over
-- this one. Before, the endpoint alone was unique and a re-post moved the row.

ALTER TABLE relay.push_subscriptions DROP CONSTRAINT IF EXISTS push_subscriptions_endpoint_key;
ALTER TABLE relay.push_subscriptions
    ADD CONSTRAINT push_subscriptions_merchant_endpoint_key UNIQUE (merchant_id, endpoint);
