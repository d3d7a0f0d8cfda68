"""The command line's exit codes, as `digestd --help` lists them."""

from __future__ import annotations

from digestd.store.runlock import EXIT_LOCKED

__all__ = ["EXIT_CODES", "EXIT_CONFIG", "EXIT_LOCKED", "EXIT_OK", "EXIT_RUNTIME", "EXIT_TEMPFAIL"]

# sysexits.h's EX_TEMPFAIL tells cron and systemd "try again later": mail is still owed, but
# nothing is lost.
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_TEMPFAIL = 75

EXIT_CODES = """\
exit codes:
  0   done (run --once: every message sent)
  1   an error, e.g. a poll or a message failed (run --once), an address is unknown
  2   the settings, subscribers or templates are invalid
  73  run: another digestd run holds the state file (one pipeline per state file)
  75  run --once: messages remain queued or deferred; the next run or the daemon retries them
"""
