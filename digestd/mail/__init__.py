"""From matches to message bytes: rendering (Jinja, per shape), MIME, the shared-parts format the outbox
stores, web copies, list headers, signed link tokens, DKIM, the compose worker processes."""
