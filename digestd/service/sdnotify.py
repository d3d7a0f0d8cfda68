"""systemd's notify protocol, spoken directly: one datagram per message to $NOTIFY_SOCKET.

The protocol is stable and tiny (systemd's `man/notify-selfcontained-example.py`), so no package:
an AF_UNIX datagram socket, '@' meaning the abstract namespace. Without NOTIFY_SOCKET (not under
systemd, or in tests) every call is a no-op, and a vanished socket is logged, never fatal.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends READY/RELOADING/STOPPING/STATUS/WATCHDOG to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = (
            "\0" + address[1:] if address.startswith("@") else address or None
        )
        self._watchdog_usec = _watchdog_usec(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """How often to ping, in seconds: half of WatchdogSec= (sd_watchdog_enabled(3)); None: off."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2_000_000

    def send(self, *fields: str) -> bool:
        """One notification, e.g. send("READY=1", "STATUS=…"); True when it went out."""
        if self.address is None:
            return False
        # One line per field: a newline inside a value would start a forged field.
        payload = "\n".join(" ".join(f.splitlines()) for f in fields).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.connect(self.address)
            self._sock.sendall(payload)
        except OSError as exc:
            log.warning("sd_notify failed error=%s", exc)
            self.close()
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) tell this reload from a later one.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping: finishing the message in flight")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC, unless WATCHDOG_PID names another process (it was meant for a parent)."""
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec)
