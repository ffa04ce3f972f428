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
SELECT id, "merchantId", status, "customerName", "serviceName", "startTime" FROM "Booking"
WHERE "merchantId" = $1 ORDER BY "startTime";

-- name: booking
SELECT id, "merchantId", status, "customerName", "serviceName", "startTime" FROM "Booking"
WHERE id = $1 AND "merchantId" = $2;
