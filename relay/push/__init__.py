"""Web Push: VAPID, the notification, the sender, subscriptions and the HTTP routes."""
