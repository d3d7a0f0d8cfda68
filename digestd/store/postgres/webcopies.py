"""Web copies of messages on PostgreSQL: a shared body per shape plus each reader's values."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime

from digestd.core.addresses import address_key
from digestd.mail.webcopy import WebBody
from digestd.store.postgres.database import PgDatabase
from digestd.store.protocols import StoredWebCopy
from digestd.store.sqlite.values import ts

__all__ = ["PgWebCopies"]


class PgWebCopies:
    """The web_copies and web_bodies tables."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def save(
        self, token: str, *, subscriber: str, html: bytes, at: datetime, expires_at: datetime
    ) -> None:
        """Keep a message's HTML (compressed by the caller) until `expires_at`; first write wins."""
        with self._db.write() as db:
            db.execute(
                "INSERT INTO web_copies (token, subscriber, html, created_at, expires_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (token, address_key(subscriber), html, ts(at), ts(expires_at)),
            )

    def save_fills(
        self,
        token: str,
        *,
        subscriber: str,
        body: WebBody,
        fills: Mapping[str, str],
        at: datetime,
        expires_at: datetime,
    ) -> None:
        """Keep a copy as a shared body plus this subscriber's values; first write wins."""
        with self._db.write() as db:
            self._db.insert_once(
                ("web", body.hash),
                "INSERT INTO web_bodies (hash, html, slots) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (body.hash, body.html, body.slots),
            )
            db.execute(
                "INSERT INTO web_copies"
                " (token, subscriber, html, created_at, expires_at, body, fills)"
                " VALUES (%s, %s, ''::bytea, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (
                    token,
                    address_key(subscriber),
                    ts(at),
                    ts(expires_at),
                    body.hash,
                    json.dumps(dict(fills), separators=(",", ":")),
                ),
            )

    def find(self, token: str, *, now: datetime) -> StoredWebCopy | None:
        """The copy stored for `token`, or None when unknown or expired."""
        row = self._db.conn.execute(
            "SELECT c.html, c.fills, b.html, b.slots FROM web_copies c"
            " LEFT JOIN web_bodies b ON b.hash = c.body"
            " WHERE c.token = %s AND c.expires_at > %s",
            (token, ts(now)),
        ).fetchone()
        if row is None:
            return None
        whole, fills, body, slots = row
        if fills is None:
            return StoredWebCopy(whole=bytes(whole))
        if body is None:
            return None  # unreachable: bodies are pruned only when no copy names them
        return StoredWebCopy(whole=None, template=bytes(body), slots=slots, fills=fills)

    def prune(self, *, now: datetime) -> int:
        """Drop the copies expired at `now` and the bodies no copy names any more."""
        with self._db.write() as db:
            cursor = db.execute("DELETE FROM web_copies WHERE expires_at <= %s", (ts(now),))
            if cursor.rowcount:
                db.execute(
                    "DELETE FROM web_bodies WHERE hash NOT IN"
                    " (SELECT body FROM web_copies WHERE body IS NOT NULL)"
                )
        return cursor.rowcount
