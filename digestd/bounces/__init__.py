"""Bounces and complaints: VERP envelope senders, DSN and ARF parsing, the mailboxes they arrive in."""
