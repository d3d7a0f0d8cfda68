"""The state file: SQLite with papers, polls, subscribers, the outbox and its ledger, web copies and
admin alert state; and the lock that admits one running pipeline per state file."""
