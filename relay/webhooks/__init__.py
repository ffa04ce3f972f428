"""Merchant webhooks: signing, endpoints, the sender, the HTTP routes and the CLI."""
