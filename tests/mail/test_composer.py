"""The compose worker: same bytes as in-process, a dead worker loses nothing, small runs stay local."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import zlib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import pytest
from daemonproc import wait_for

from digestd.core.model import Digest, Match, Reason, Subscriber
from digestd.mail import workers as composer_module
from digestd.mail.render import Environments, RenderContext, make_environments, templates_dir
from digestd.mail.webcopy import fill_page
from digestd.mail.workers import Composer, MailJob, WebCopy, assemble, composer, template_dirs
from digestd.sources.hf_json import parse_hf_daily

FIXTURES = Path(__file__).parents[1] / "fixtures"
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


def _children(pid: int) -> list[int]:
    """The compose workers (and the resource tracker) `pid` spawned, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"multiprocessing" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not Path("/proc").is_dir(), reason="needs workers")
def test_item11_workers_exit_when_the_run_is_killed_mid_compose(tmp_path: Path) -> None:
    """kill -9 of `run --once` while composing: its workers must not live on (PPID 1) for ever."""
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())
    (tmp_path / "papers.json").write_text(json.dumps(items))
    lines = ["subscribers:", *(f"  - email: w{i}@example.org" for i in range(3000))]
    (tmp_path / "subscribers.yaml").write_text("\n".join(lines) + "\n")
    (tmp_path / "digestd.yaml").write_text(
        "source: {kind: file, url: papers.json}\nstate: state.sqlite3\nlookback: 3650d\n"
        "delivery: {kind: maildir, path: mail, from: 'Digest <d@example.org>'}\n"
        "subscribers: subscribers.yaml\n"
    )
    cmd = [sys.executable, "-m", "digestd", "--config", str(tmp_path / "digestd.yaml")]
    proc = subprocess.Popen([*cmd, "run", "--once"], stdout=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        wait_for(lambda: len(_children(proc.pid)) >= 2, what="for the compose workers")
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        wait_for(lambda: not any(_alive(w) for w in workers), timeout=10, what="workers to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:  # the ones this test started, if they outlived it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
