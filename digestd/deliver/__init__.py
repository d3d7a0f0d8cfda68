"""Draining the outbox: claims, parallel senders, group commits of outcomes; and the transports (SMTP,
Maildir, a pool of connections)."""
