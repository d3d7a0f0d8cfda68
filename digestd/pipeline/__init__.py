"""Orchestration: ingest (poll → store → owed alerts), compose (due digests → outbox), deliver_due. The
only place that knows the order."""
