"""Helpers to run the real daemon as a subprocess: a notify socket to read, logs, HTTP, items."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


class NotifyListener:
    """The service manager's side of sd_notify: a datagram socket in the abstract namespace."""

    def __init__(self) -> None:
        self.name = f"@digestd-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def having(self, key: str) -> list[dict[str, str]]:
        return [m for m in list(self.messages) if key in m]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting {what}")
        time.sleep(0.05)


@contextmanager
def daemon(
    config: Path,
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
    max_files: int | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """The daemon running (with RLIMIT_NOFILE set to `max_files`); killed at the end if need be."""

    def limit() -> None:
        if max_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))

    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "digestd", "--config", str(config), *args, "run"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, **(env or {})},
            preexec_fn=limit,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)


def http_port(log: Path) -> int:
    wait_for(lambda: "http listening" in log.read_text(), what="for the HTTP listener")
    found = re.search(r"http listening host=\S+ port=(\d+)", log.read_text())
    assert found, log.read_text()
    return int(found.group(1))


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def item(paper_id: str, title: str, author: str = "Ada Lovelace") -> dict[str, Any]:
    """A Daily Papers item shaped like the recorded ones, with our own id, title and author."""
    base: dict[str, Any] = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())[0]
    base = json.loads(json.dumps(base))
    base["paper"]["id"] = paper_id
    base["paper"]["title"] = base["title"] = title
    base["paper"]["summary"] = f"{title}. An abstract."
    base["paper"]["authors"] = [{"name": author}]
    return base
