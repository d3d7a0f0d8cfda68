"""Fault suite, issue 12 items 9 and 11: hostile sources against the real CLI and daemon.

Item 9: a feed claims a real paper (through an arXiv link, or through `arxiv.org/abs/…` hidden in a
query string on its own host) with a huge version and its own title, abstract and author. Every
subscriber must still read the real paper, linked to its real page, once.

Item 11: a feed URL carrying credentials and a source whose error text carries terminal escapes;
neither the secrets nor the escapes may reach a log line, `check`, `status`, a stored poll error
or an admin alert mail.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from daemonproc import daemon, item, wait_for
from httpserver import LocalHTTPServer
from smtpserver import SMTPTestServer

P1, P2 = "2611.00001", "2611.00002"
REAL = {
    P1: ("Sparse Experts for the KV Cache", "Real abstract one: sparse experts.", "Ada Lovelace"),
    P2: ("Attention Offloading at Scale", "Real abstract two: offloading.", "Grace Hopper"),
}
EVIL_WORDS = ("CRYPTO", "Mallory", "evil.example", "v10000", "Poisoned")

SUBSCRIBERS = """\
subscribers:
  - email: alice@example.org
    rules:
      - any: ["kv cache", "attention offloading"]
  - email: bob@example.org
    rules:
      - authors: ["Ada Lovelace", "Grace Hopper"]
  - email: carol@example.org
    rules:
      - query: 'sparse OR offloading'
"""
READERS = ("alice@example.org", "bob@example.org", "carol@example.org")


def digestd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digestd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def hf_items(ids: tuple[str, ...]) -> list[dict[str, Any]]:
    items = []
    for paper_id in ids:
        title, abstract, author = REAL[paper_id]
        listed = item(paper_id, title, author)
        listed["paper"]["summary"] = listed["summary"] = abstract
        items.append(listed)
    return items


def serve_hf(server: LocalHTTPServer, listing: list[list[dict[str, Any]]]) -> None:
    """Every day's first page is the listing of the current run (`listing[0]`, then the next)."""

    def handler(path: str, query: dict[str, str], headers: Mapping[str, str]) -> Any:
        body = listing[0] if query.get("p", "0") == "0" else []
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    server.route("/api/daily_papers", handler)


def poison_feed(ids: tuple[str, ...], run: int) -> bytes:
    """Per paper: an item claiming it by an arXiv link, in words the readers' rules match (so the
    poisoned text would be mailed if it were believed), and one hiding the id in its own URL."""
    matching = f"Poisoned {run}: KV cache, attention offloading, sparse. BUY CRYPTO"
    items = []
    for paper_id in ids:
        for link, text in (
            (f"https://arxiv.org/abs/{paper_id}v10000", matching),
            (f"https://evil.example/x?arxiv.org/abs/{paper_id}v10000", f"Poisoned {run}: CRYPTO"),
        ):
            items.append(
                f"<item><title>{text}</title><link>{link}</link>"
                f"<description>{text} at evil.example</description>"
                f"<author>mallory@evil.example (Mallory)</author><guid>{link}</guid></item>"
            )
    return (
        "<?xml version='1.0'?><rss version='2.0'><channel><title>poison</title>"
        + "".join(items)
        + "</channel></rss>"
    ).encode()


def write_config(
    tmp_path: Path, sources: list[dict[str, str]], smtp_port: int, **extra: object
) -> Path:
    """The settings as JSON, which YAML reads as it is (no quoting of hostile URLs to get right)."""
    (tmp_path / "subscribers.yaml").write_text(SUBSCRIBERS)
    settings = {
        "sources": [{**source, "timeout": "5s"} for source in sources],
        "state": "var/digestd.sqlite3",
        "subscribers": "subscribers.yaml",
        "delivery": {
            "kind": "smtp", "host": "127.0.0.1", "port": smtp_port, "security": "none",
            "timeout": "5s", "from": "Paper Digest <digest@example.org>",
        },
        **extra,
    }  # fmt: skip
    config = tmp_path / "digestd.yaml"
    config.write_text(json.dumps(settings, indent=2))
    return config


def hf_source(url: str) -> dict[str, str]:
    return {"name": "hf", "kind": "huggingface", "url": f"{url}/api/daily_papers"}


def feed_source(url: str) -> dict[str, str]:
    return {"name": "poison", "kind": "feed", "url": url}


def plain(message: EmailMessage) -> str:
    return message.get_body(("plain",)).get_content()  # type: ignore[union-attr,no-any-return]


def html(message: EmailMessage) -> str:
    return message.get_body(("html",)).get_content()  # type: ignore[union-attr,no-any-return]


@pytest.mark.parametrize("order", ["hf-first", "feed-first"])
def test_item9_a_feed_never_rewrites_a_hugging_face_paper(
    order: str, tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    listing: list[list[dict[str, Any]]] = [hf_items((P1,))]
    serve_hf(http_server, listing)
    hf, feed = hf_source(http_server.url), feed_source(f"{http_server.url}/feed.xml")
    config = write_config(
        tmp_path, [hf, feed] if order == "hf-first" else [feed, hf], smtp_server.port
    )
    # The feed claims what HF lists, and on the last run also P1, which HF no longer lists.
    for run, (listed, claimed) in enumerate(
        [((P1,), (P1,)), ((P1, P2), (P1, P2)), ((P2,), (P1, P2))], start=1
    ):
        listing[0] = hf_items(listed)
        http_server.respond("/feed.xml", body=poison_feed(claimed, run))
        result = digestd(config, "run", "--once")
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr

    seen: dict[str, list[str]] = {reader: [] for reader in READERS}
    ids_by_paper: dict[tuple[str, str], set[str]] = {}
    for received in smtp_server.received:
        (reader,) = received.rcpt_tos
        message = received.message
        text, page = plain(message), html(message)
        for word in EVIL_WORDS:
            assert word not in text and word not in page, (reader, word, text)
        for paper_id, (title, abstract, author) in REAL.items():
            if f"https://huggingface.co/papers/{paper_id}" not in text:
                continue
            seen[reader].append(paper_id)
            ids_by_paper.setdefault((reader, paper_id), set()).add(str(message["Message-ID"]))
            assert title in text and title in page
            assert author in text
            assert abstract.split(":")[0] in text or abstract in page
    # Per reader: both papers arrived, each once (a re-sent copy would carry the same Message-ID).
    for reader in READERS:
        assert sorted(seen[reader]) == [P1, P2], (reader, seen[reader])
    assert all(len(ids) == 1 for ids in ids_by_paper.values())
    with sqlite3.connect(tmp_path / "var" / "digestd.sqlite3") as db:
        rows = dict(db.execute("SELECT id, title FROM papers WHERE id IN (?, ?)", (P1, P2)))
        versions = {v for (v,) in db.execute("SELECT version FROM papers")}
    assert rows == {P1: REAL[P1][0], P2: REAL[P2][0]}
    assert 10000 not in versions


SECRET, PASSWORD = "SECRETtok3n", "pw"
ESCAPES = ("\x1b", "\x07", "\x9b")


def leaks(text: str) -> list[str]:
    found = [s for s in (SECRET, f":{PASSWORD}@", f"{PASSWORD}@") if s in text]
    return found + [repr(c) for c in ESCAPES if c in text]


def test_item11_feed_url_credentials_reach_no_log_status_check_row_or_alert(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    def echo(path: str, query: dict[str, str], headers: Mapping[str, str]) -> Any:
        # A hostile server quotes what it got, with a terminal escape: 404 forever.
        said = f"no feed at {path}?token={query.get('token')} \x1b[2J\x1b]0;owned\x07 ({SECRET})"
        return 404, {"Content-Type": "text/plain"}, said.encode()

    http_server.route("/feed", echo)
    host = http_server.url.removeprefix("http://")
    url = f"http://user:{PASSWORD}@{host}/feed?token={SECRET}&x=1"
    config = write_config(
        tmp_path,
        [feed_source(url)],
        smtp_server.port,
        admins=["admin@example.org"],
        alerts={"source_down_after": "0s"},
    )
    log = tmp_path / "daemon.log"
    with daemon(config, log) as proc:
        wait_for(lambda: smtp_server.received, what="for the admin alert")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert http_server.requests_to("/feed")[0].query["token"] == SECRET  # it was really used
    alert = smtp_server.received[0].message
    assert "PROBLEM" in str(alert["Subject"]) and "***" in plain(alert)
    check, status = digestd(config, "check"), digestd(config, "status")
    assert check.returncode == 0 and status.returncode == 0, check.stderr + status.stderr
    with sqlite3.connect(tmp_path / "var" / "digestd.sqlite3") as db:
        errors = [e for (e,) in db.execute("SELECT error FROM polls WHERE error IS NOT NULL")]
    assert errors and "HTTP 404" in errors[0]
    shown = {
        "log": log.read_text(),
        "alert": alert.as_string() + plain(alert) + html(alert),
        "check": check.stdout + check.stderr,
        "status": status.stdout + status.stderr,
        "rows": "\n".join(errors),
    }
    assert "token=***" in shown["check"] and "***@" in shown["check"]
    assert {where: leaks(text) for where, text in shown.items() if leaks(text)} == {}


def test_item11_escapes_in_a_source_error_reach_no_log_status_or_row(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    error = "quota exceeded \x1b[2J\x1b[31mred\x1b]0;owned\x07 \x9b1;1H\x00 done"
    http_server.respond("/api/daily_papers", json={"error": error}, times=None)
    config = write_config(tmp_path, [hf_source(http_server.url)], smtp_server.port)
    result = digestd(config, "run", "--once")
    assert result.returncode == 1 and "quota exceeded" in result.stderr
    status = digestd(config, "status")
    with sqlite3.connect(tmp_path / "var" / "digestd.sqlite3") as db:
        (row,) = [e for (e,) in db.execute("SELECT error FROM polls")]
    assert "quota exceeded" in row and "red" in row and "done" in status.stdout
    for where, text in {"log": result.stderr, "status": status.stdout, "row": row}.items():
        assert leaks(text) == [] and "\x00" not in text, where
