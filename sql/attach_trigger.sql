-- Run by every `relay migrate` after the numbered migrations: (re)attach the trigger.
-- Same trigger name as the seed guide, so it replaces the seed's NOTIFY-only trigger.
DROP TRIGGER IF EXISTS booking_changes_trigger ON "Booking";
CREATE TRIGGER booking_changes_trigger
AFTER INSERT OR UPDATE OR DELETE ON "Booking"
FOR EACH ROW EXECUTE FUNCTION relay.notify_booking_changes();
