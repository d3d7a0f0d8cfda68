"""Shared pytest fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from httpserver import LocalHTTPServer
from smtpserver import SMTPTestServer

# aiosmtpd logs from its own thread, sometimes after pytest has closed the capture stream.
logging.getLogger("mail.log").setLevel(logging.CRITICAL)


@pytest.fixture
def http_server() -> Iterator[LocalHTTPServer]:
    """A real HTTP server on 127.0.0.1:<free port>, scripted per test (see tests/httpserver.py)."""
    server = LocalHTTPServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def smtp_server() -> Iterator[SMTPTestServer]:
    """A real aiosmtpd server on 127.0.0.1:<free port>; faults scripted per test (smtpserver.py)."""
    server = SMTPTestServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["lockstep", "pipelining"])
def smtp_server_modes(request: pytest.FixtureRequest) -> Iterator[SMTPTestServer]:
    """`smtp_server` once without and once with PIPELINING: both command exchanges of SmtpMailer."""
    server = SMTPTestServer(pipelining=request.param == "pipelining").start()
    try:
        yield server
    finally:
        server.stop()
