"""The compose worker: same bytes as in-process, a dead worker loses nothing, small runs stay local."""

from __future__ import annotations

import json
import os
import signal
import zlib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import pytest

from digestd import composer as composer_module
from digestd.composer import Composer, MailJob, WebCopy, assemble, composer, template_dirs
from digestd.model import Digest, Match, Reason, Subscriber
from digestd.render import Environments, RenderContext, make_environments, templates_dir
from digestd.sources.hf_json import parse_hf_daily
from digestd.webcopy import fill_page

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
NAMES = [None, "Ann", "Zoë Ünicode", "O'Brien", 'Eve <b>"x"</b> & co']


@pytest.fixture(scope="module")
def envs() -> Environments:
    return make_environments()


@pytest.fixture(scope="module")
def jobs() -> list[MailJob]:
    papers = parse_hf_daily((FIXTURES / "hf_daily_papers_seed.json").read_bytes()).papers[:12]
    found = tuple(Match(p, (Reason(0, "attention", "abstract"),)) for p in papers)
    made = []
    for n in range(30):
        name = NAMES[n % len(NAMES)]
        sub = Subscriber(email=f"r{n}@example.org", name=name, max_papers=10)
        ctx = RenderContext(
            site_name="Paper Digest",
            date_label="Friday 27 November 2026",
            unsubscribe_url=f"https://digest.example.org/unsubscribe/tok{n:08d}",
            web_url=f"https://digest.example.org/view/view{n:08d}" if n % 3 else None,
            max_papers=10,
        )
        made.append(
            MailJob(
                digest=Digest(sub, "digest", found[: 5 + n % 6], more=n % 4),
                ctx=ctx,
                sender="Paper Digest <digest@example.org>",
                to=sub.email,
                to_name=name,
                message_id=f"<digest.{n}@example.org>",
                date=NOW,
                headers={"List-Id": "Paper Digest <digest.example.org>"},
                web=replace(ctx, web_copy=True) if ctx.web_url else None,
            )
        )
    return made


def page(web: WebCopy | None) -> str | None:
    if web is None:
        return None
    if web.body is None:
        return zlib.decompress(web.whole).decode()
    return fill_page(zlib.decompress(web.body.html).decode(), json.loads(web.body.slots), web.fills)


def test_the_worker_gives_the_same_bytes_and_web_copies(
    envs: Environments, jobs: list[MailJob]
) -> None:
    local = [assemble(job, envs) for job in jobs]
    with composer(envs, composer_module.POOL_MIN + 1) as mails:
        assert mails.ready(timeout=60)
        remote = mails.submit(jobs)()
    assert [c.message.whole() for c in remote] == [c.message.whole() for c in local]
    assert [c.message for c in remote] == [c.message for c in local]  # the same parts, too
    # Checked where they were built, and the mark survives the trip: the sender skips its scans.
    assert [c.message.canonical for c in local] == [True] * len(local)
    # A part shared by several messages crosses once per worker: one object on this side too.
    parts = [part for c in remote for _, part in c.message.parts]
    assert len({id(part) for part in parts}) < len(parts)
    # The bodies differ (each process has its own placeholder nonce); the pages served do not.
    assert [page(c.web) for c in remote] == [page(c.web) for c in local]
    assert any(c.web is not None and c.web.body is None for c in local)  # O'Brien: whole page
    assert any(c.web is not None and c.web.body is not None for c in local)


def test_a_killed_worker_costs_nothing_but_time(envs: Environments, jobs: list[MailJob]) -> None:
    local = [assemble(job, envs).message.whole() for job in jobs]
    with composer(envs, composer_module.POOL_MIN + 1) as mails:
        assert mails.ready(timeout=60)
        pool = mails._pool
        assert pool is not None
        for pid in list(pool._processes):  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
        first = mails.submit(jobs)  # submitted before or after the pool notices: either way
        assert [c.message.whole() for c in first()] == local
        assert [c.message.whole() for c in mails.submit(jobs)()] == local
        assert not mails.ready(timeout=0)  # the rest is composed in this process


def test_small_runs_and_unknown_loaders_stay_in_process(
    envs: Environments, jobs: list[MailJob]
) -> None:
    with composer(envs, composer_module.POOL_MIN) as mails:
        assert not mails.ready(timeout=0)
        assert [c.message.whole() for c in mails.submit(jobs[:3])()] == [
            assemble(j, envs).message.whole() for j in jobs[:3]
        ]
    own = Environments(
        html=jinja2.Environment(loader=jinja2.DictLoader({})),
        text=jinja2.Environment(loader=jinja2.DictLoader({})),
    )
    with composer(own, 10_000) as mails:
        assert not mails.ready(timeout=0)
    assert isinstance(Composer(envs).submit([])(), list)


def test_template_dirs_rebuild_what_make_environments_was_given(tmp_path: Path) -> None:
    assert template_dirs(make_environments()) == []
    assert template_dirs(make_environments(tmp_path)) == [tmp_path]
    loader = jinja2.ChoiceLoader(
        [
            jinja2.FileSystemLoader(str(tmp_path)),
            jinja2.DictLoader({}),
            jinja2.FileSystemLoader(str(templates_dir())),
        ]
    )
    odd = Environments(
        html=jinja2.Environment(loader=loader), text=jinja2.Environment(loader=loader)
    )
    assert template_dirs(odd) is None
