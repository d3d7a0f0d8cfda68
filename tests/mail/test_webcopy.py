"""Web copies as a shared body plus per-subscriber values: same page as a full render, expiry, pruning."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from smtpserver import SMTPTestServer

from digestd import pipeline
from digestd.core.latex import readable_paper
from digestd.deliver.transports.smtp import SmtpMailer
from digestd.mail import assemble
from digestd.mail.render import make_environments, render_digest
from digestd.mail.webcopy import body_for, fill_page
from digestd.pipeline import Audience, Deps, Options
from digestd.rules.subscribers import load_subscribers
from digestd.service.routes import web_page
from digestd.sources import FileSource
from digestd.store.sqlite import Store

FIXTURES = Path(__file__).parents[1] / "fixtures"
NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
SUBSCRIBERS = """\
subscribers:
  - email: alice@example.org
    name: Alice Example
  - email: bob@example.org
  - email: carol@example.org
    name: Carol O'Brien & Co
"""


def copy_token(deps: Deps, email: str) -> str:
    message_id = pipeline.make_message_id(deps, email, "digest", f"once-{NOW.isoformat()}")
    links = pipeline.links_for(deps, deps.subscribers.by_email(email), message_id)  # type: ignore[arg-type]
    assert links.view_url is not None
    return links.view_url.rsplit("/", 1)[1]


def full_page(deps: Deps, email: str) -> str:
    """The web copy rendered the slow way, with no cache or substitution involved."""
    sub = deps.subscribers.by_email(email)
    assert sub is not None
    message_id = pipeline.make_message_id(deps, email, "digest", f"once-{NOW.isoformat()}")
    links = pipeline.links_for(deps, sub, message_id)
    ctx = assemble.render_context(deps.options, now=NOW, links=links, sub=sub, web_copy=True)
    papers = deps.store.papers.candidates(email, since=NOW - deps.options.lookback)
    found = deps.audience.matcher.match([readable_paper(p) for p in papers], sub)
    digest = assemble.digest_for(sub, "digest", found)
    return render_digest(digest, deps.envs, ctx, budget=None).html


async def test_each_copy_is_the_full_render_and_plain_ones_share_one_body(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())
    (tmp_path / "papers.json").write_text(json.dumps(items))
    deps = Deps(
        store=Store(tmp_path / "state.sqlite3"),
        source=FileSource(tmp_path / "papers.json"),
        mailer=SmtpMailer(smtp_server.host, smtp_server.port, security="none", timeout=5.0),
        audience=Audience.of(load_subscribers(SUBSCRIBERS, file="subscribers.yaml")),
        envs=make_environments(),
        options=Options(
            sender="Paper Digest <digest@example.org>",
            public_url="https://digest.example.org",
            secret=b"s" * 32,
            view_days=30,
        ),
    )
    try:
        pipeline.register(deps, now=NOW)
        await pipeline.ingest(deps, now=NOW)
        emails = ("alice@example.org", "bob@example.org", "carol@example.org")
        expected = {email: full_page(deps, email) for email in emails}  # before papers are reserved
        pipeline.compose(deps, now=NOW, once=True)
        pages = {}
        for email in emails:
            page = web_page(deps.store, copy_token(deps, email), now=NOW)
            assert page is not None
            pages[email] = page
            assert pages[email] == expected[email]
        assert "Alice Example" in pages["alice@example.org"]
        assert "Alice" not in pages["bob@example.org"]  # no value leaks between subscribers
        db = deps.store.db.conn
        assert db.execute("SELECT count(*) FROM web_bodies").fetchone()[0] == 2  # named, unnamed
        # Carol's name is not plain: her copy is the whole page, compressed, as before.
        whole = db.execute(
            "SELECT fills, length(html) FROM web_copies WHERE subscriber = 'carol@example.org'"
        ).fetchone()
        assert whole[0] is None and whole[1] > 0
        assert (
            web_page(
                deps.store, copy_token(deps, "alice@example.org"), now=NOW + timedelta(days=31)
            )
            is None
        )
        assert deps.store.webcopies.prune(now=NOW + timedelta(days=31)) == 3
        assert db.execute("SELECT count(*) FROM web_bodies").fetchone()[0] == 0
    finally:
        await deps.mailer.aclose()
        deps.store.close()


def test_a_body_outlives_its_first_copy_while_another_names_it(tmp_path: Path) -> None:
    slots = (("name", "@N@"), ("web", "@W@"))
    body = body_for("<p>Hi @N@, see @W@ or @W@</p>", slots)
    with Store(tmp_path / "s.sqlite3") as store:
        for i, days in enumerate((1, 5)):
            store.webcopies.save_fills(
                f"t{i}", subscriber=f"u{i}@example.org", body=body, fills={"name": f"U{i}"},
                at=NOW, expires_at=NOW + timedelta(days=days),
            )  # fmt: skip
        assert web_page(store, "t0", now=NOW) == "<p>Hi U0, see  or </p>"
        assert store.webcopies.prune(now=NOW + timedelta(days=2)) == 1
        assert web_page(store, "t1", now=NOW + timedelta(days=2)) == "<p>Hi U1, see  or </p>"
        copy = store.webcopies.find("t1", now=NOW + timedelta(days=2))
        assert copy is not None and copy.template == body.html and copy.fills == '{"name":"U1"}'
        assert store.webcopies.prune(now=NOW + timedelta(days=6)) == 1
        assert store.db.conn.execute("SELECT count(*) FROM web_bodies").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("fills", "page"), [({}, "a  b "), ({"x": "1", "y": "2"}, "a 1 b 2"), ({"y": "é"}, "a  b é")]
)
def test_fill_page_puts_each_value_where_its_token_was(fills: dict[str, str], page: str) -> None:
    assert fill_page("a @X@ b @Y@", {"x": "@X@", "y": "@Y@"}, fills) == page
