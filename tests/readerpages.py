"""The reader pages served for real: a store, the admin's YAML (two rule sets offered as topics),
`signup:` settings, the daemon's routes under uvicorn, and an aiosmtpd relay the outbox sends to."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
from smtpserver import SMTPTestServer

from digestd import pipeline
from digestd.config.sections import SignupSettings
from digestd.deliver.transports.smtp import SmtpMailer
from digestd.mail.render import make_environments
from digestd.pipeline import Audience, Deps, Options
from digestd.rules.subscribers import load_subscribers
from digestd.service import wiring as app
from digestd.service.web import WebServer
from digestd.sources import FileSource
from digestd.store.sqlite import Store

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
SECRET = b"an-operator-secret-of-32-bytes!!"
SUBSCRIBERS = """\
rule_sets:
  llm: [{any: [language model, llm, transformer]}]
  vision: [{any: [image, vision, video]}]
  hidden: [{any: [secret]}]
subscribers:
  - email: admin-reader@example.org
    use: [llm]
"""
SIGNUP = {
    "enabled": True,
    "topics": {"llm": "Language models", "vision": "Computer vision"},
    "confirm_every": "10m",
    "per_ip": 20,
}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Site:
    deps: Deps
    client: httpx.AsyncClient
    clock: Clock
    smtp: SMTPTestServer
    settings: dict[str, Any] = field(default_factory=lambda: dict(SIGNUP))

    def signup(self) -> SignupSettings:
        return SignupSettings.model_validate(self.settings)

    async def deliver(self) -> None:
        await pipeline.deliver_due(self.deps, now=self.clock(), clock=self.clock)

    def mails_to(self, email: str) -> list[EmailMessage]:
        return [r.message for r in self.smtp.received if r.rcpt_tos == [email]]

    async def csrf(self, path: str) -> str:
        page = await self.client.get(path)
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found, page.text
        return found.group(1)

    async def subscribe(
        self, headers: dict[str, str] | None = None, **fields: Any
    ) -> httpx.Response:
        data: dict[str, Any] = {
            "email": "new@example.org", "name": "", "topics": ["llm"], "keywords": "",
            "authors": "", "query": "", "frequency": "daily", "hour": "7", "weekday": "mon",
            "timezone": "Europe/Berlin", "max_papers": "10", "website": "",
        }  # fmt: skip
        data.update(fields)
        if "csrf" not in fields:
            data["csrf"] = await self.csrf("/subscribe")
        return await self.client.post("/subscribe", data=data, headers=headers)


def link_in(message: EmailMessage, path: str) -> str:
    """The path of the first `path` link in the text part of `message`."""
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    found = re.search(rf"https://digest\.example\.org(/{path}/[A-Za-z0-9_-]+)", text)
    assert found, text
    return found.group(1)


def make_deps(tmp_path: Path, smtp: SMTPTestServer) -> Deps:
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())
    (tmp_path / "papers.json").write_text(json.dumps(items))
    deps = Deps(
        store=Store(tmp_path / "state.sqlite3"),
        source=FileSource(tmp_path / "papers.json"),
        mailer=SmtpMailer(smtp.host, smtp.port, security="none", timeout=5.0),
        audience=Audience.of(load_subscribers(SUBSCRIBERS, file="subscribers.yaml")),
        envs=make_environments(),
        options=Options(
            sender="Paper Digest <digest@example.org>",
            public_url="https://digest.example.org",
            secret=SECRET,
            view_days=30,
        ),
    )
    pipeline.register(deps, now=NOW)
    return deps


@asynccontextmanager
async def serve(tmp_path: Path, smtp: SMTPTestServer) -> AsyncIterator[Site]:
    deps = make_deps(tmp_path, smtp)
    clock = Clock()
    holder: list[Site] = []
    routes = app.web_routes(deps, clock=clock, signup=lambda: holder[0].signup())
    server = WebServer("127.0.0.1:0", routes)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base, follow_redirects=False) as client:
            holder.append(Site(deps, client, clock, smtp))
            yield holder[0]
    finally:
        await server.stop()
        await deps.mailer.aclose()
        deps.store.close()
