-- The demo application's own queries (`relay demo`): its "Booking" table and the
-- changes it makes, so the live calendar has something to show.

-- name: booking_table
CREATE TABLE IF NOT EXISTS "Booking" (
    id              text PRIMARY KEY,
    "merchantId"    text NOT NULL,
    status          text NOT NULL,
    "customerName"  text NOT NULL,
    "serviceName"   text NOT NULL,
    "startTime"     timestamptz NOT NULL,
    "updatedAt"     timestamptz NOT NULL DEFAULT now()
);

-- name: open_bookings
SELECT id FROM "Booking"
WHERE "merchantId" = $1 AND status NOT IN ('COMPLETED', 'CANCELLED');

-- name: add_booking
INSERT INTO "Booking" (id, "merchantId", status, "customerName", "serviceName", "startTime")
VALUES ($1, $2, 'PENDING', $3, $4, $5);

-- name: set_status
UPDATE "Booking" SET status = $2, "updatedAt" = now() WHERE id = $1;

-- name: remove_booking
DELETE FROM "Booking" WHERE id = $1;

-- name: bookings
SELECT b.id, b."merchantId", b.status, b."customerName", b."serviceName", b."startTime", p.status AS payment
FROM "Booking" b LEFT JOIN billing.payments p ON p.booking_id = b.id
WHERE b."merchantId" = $1 ORDER BY b."startTime";

-- name: booking
SELECT b.id, b."merchantId", b.status, b."customerName", b."serviceName", b."startTime", p.status AS payment
FROM "Booking" b LEFT JOIN billing.payments p ON p.booking_id = b.id
WHERE b.id = $1 AND b."merchantId" = $2;

-- The demo's second source: payments of bookings, snake_case in a schema of their own
-- (`relay demo` attaches it as the source "payment").

-- name: payment_table
CREATE SCHEMA IF NOT EXISTS billing;
CREATE TABLE IF NOT EXISTS billing.payments (
    id           text PRIMARY KEY,
    merchant_id  text NOT NULL,
    booking_id   text NOT NULL,
    status       text NOT NULL,
    amount_cents integer NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- name: unpaid_bookings
SELECT b.id FROM "Booking" b
WHERE b."merchantId" = $1 AND b.status IN ('CONFIRMED', 'IN_PROGRESS', 'COMPLETED')
  AND NOT EXISTS (SELECT 1 FROM billing.payments p WHERE p.booking_id = b.id);

-- name: pending_payments
SELECT id FROM billing.payments WHERE merchant_id = $1 AND status = 'PENDING';

-- name: add_payment
INSERT INTO billing.payments (id, merchant_id, booking_id, status, amount_cents)
VALUES ($1, $2, $3, 'PENDING', $4);

-- name: settle_payment
UPDATE billing.payments SET status = $2, updated_at = now() WHERE id = $1;
