"""A real HTTP server on 127.0.0.1 (port 0) whose replies tests script per path, recording requests.

Usage::

    server.respond("/api/daily_papers", body=b"[]")                 # once
    server.respond("/api/daily_papers", status=500, times=None)     # forever
    server.route("/api/daily_papers", lambda path, query, headers: (200, {}, b"[]"))
    server.url                                                      # "http://127.0.0.1:PORT"
    server.requests                                                 # [Request(...), ...]

Scripted responses for a path are served in order; when none is left the path's handler (if any)
answers; otherwise 404. `stall()` makes a handler that hangs until the server closes (for timeouts).
It serves one request per connection (HTTP/1.0), so it also works for a daemon subprocess.
"""

from __future__ import annotations

import json as jsonlib
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Handler", "LocalHTTPServer", "Reply", "Request"]

Reply = tuple[int, Mapping[str, str], bytes]
# (path, query with the first value of each key, request headers) -> (status, headers, body)
Handler = Callable[[str, dict[str, str], Mapping[str, str]], Reply]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]  # first value of each parameter
    headers: dict[str, str]  # keys lower-cased
    body: bytes = b""
    raw_query: str = ""


@dataclass
class _Scripted:
    reply: Reply
    times: int | None  # None: forever


@dataclass
class _Route:
    queue: deque[_Scripted] = field(default_factory=deque)
    handler: Handler | None = None


class LocalHTTPServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, _Route] = {}
        self._closed = threading.Event()
        self.requests: list[Request] = []
        self.errors: list[str] = []  # tracebacks of handlers that raised (answered with 500)
        self._httpd = ThreadingHTTPServer((host, 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._httpd.handle_error = self._quiet_error  # type: ignore[method-assign]
        # A short poll interval keeps shutdown (once per test) fast.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        port = self._httpd.server_address[1]
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"

    # Scripting -------------------------------------------------------------------------------

    def respond(
        self,
        path: str,
        *,
        status: int = 200,
        body: bytes | str = b"",
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        times: int | None = 1,
    ) -> None:
        """Queue a reply for `path` (`times=None`: repeat it forever). `json=` serialises a body."""
        hdrs = dict(headers or {})
        if json is not None:
            body = jsonlib.dumps(json)
            hdrs.setdefault("Content-Type", "application/json")
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._route(path).queue.append(_Scripted((status, hdrs, data), times))

    def route(self, path: str, handler: Handler) -> None:
        """Answer `path` with `handler` once its queued replies are used up."""
        with self._lock:
            self._route(path).handler = handler

    def stall(self, limit: float = 10.0) -> Handler:
        """A handler that hangs until the server closes (at most `limit` s), then answers 503."""

        def handler(path: str, query: dict[str, str], headers: Mapping[str, str]) -> Reply:
            self._closed.wait(limit)
            return 503, {}, b""

        return handler

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self._closed.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LocalHTTPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Serving ---------------------------------------------------------------------------------

    def _route(self, path: str) -> _Route:
        return self._routes.setdefault(path, _Route())

    def _dispatch(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            route = self._routes.get(request.path)
            scripted = self._pop(route) if route else None
            handler = route.handler if route else None
        if scripted is not None:
            return scripted
        if handler is None:
            return 404, {"Content-Type": "text/plain"}, f"no reply for {request.path}".encode()
        try:
            return handler(request.path, request.query, request.headers)
        except Exception:
            trace = traceback.format_exc()
            with self._lock:
                self.errors.append(trace)
            return 500, {"Content-Type": "text/plain"}, trace.encode()

    @staticmethod
    def _pop(route: _Route) -> Reply | None:
        if not route.queue:
            return None
        head = route.queue[0]
        if head.times is not None:
            head.times -= 1
            if head.times <= 0:
                route.queue.popleft()
        return head.reply

    def _quiet_error(self, request: object, client_address: object) -> None:
        # A client that timed out and hung up is expected in tests; anything else is printed.
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            traceback.print_exc()


def _make_handler(server: LocalHTTPServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(
                method=self.command,
                path=parts.path,
                query={k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                raw_query=parts.query,
            )
            status, headers, payload = server._dispatch(request)
            self.send_response(status)
            lowered = {k.lower() for k in headers}
            for key, value in headers.items():
                self.send_header(key, value)
            if "content-length" not in lowered:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean; requests are recorded instead

    return _Handler
