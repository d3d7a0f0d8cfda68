"""Issue 12 item 10: hostile configuration files. A Latin-1 byte, a YAML alias bomb and deep nesting
(in YAML and in a `query:`) are positioned config errors, never tracebacks; a reload that fails keeps
the old configuration and the next SIGHUP is still honoured."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from daemonproc import daemon, item, wait_for
from httpserver import LocalHTTPServer
from smtpserver import SMTPTestServer
from test_service import SUBSCRIBERS, Listing, to, write_config

from digestd.config.positions import load_yaml
from digestd.config.settings import load_settings
from digestd.core.errors import ConfigError
from digestd.rules.query import QuerySyntaxError, parse_query
from digestd.service import wiring as app
from digestd.service.clock import utcnow
from digestd.service.daemon import Daemon
from digestd.service.reload import Config, load_config

pytestmark = pytest.mark.timeout(60)


def alias_bomb(levels: int = 9, key: str = "subscribers") -> str:
    """The "billion laughs": each line names the one above nine times (9**9 values, ~400 bytes)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, levels):
        lines.append(f"l{n}: &l{n} [" + ",".join([f"*l{n - 1}"] * 9) + "]")
    lines.append(f"{key}: *l{levels - 1}")
    return "\n".join(lines) + "\n"


def deep_query(depth: int = 300) -> str:
    query = "(" * depth + "kv" + ")" * depth
    return SUBSCRIBERS.replace('- any: ["kv cache"]', f"- query: '{query}'", 1)


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


def test_item10_alias_bomb_is_a_positioned_error_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_yaml(alias_bomb(), file="f.yaml")
    assert time.monotonic() - started < 1
    [problem] = problems(info)
    assert problem.startswith("f.yaml:"), problem
    assert "alias" in problem and "lol" not in problem


def test_item10_a_few_aliases_still_work() -> None:
    text = "base: &b {p: 1}\nitems: [*b, *b, *b]\nmerged: {<<: *b, q: 2}\n"
    data, _ = load_yaml(text, file="f.yaml")
    assert data["items"] == [{"p": 1}] * 3 and data["merged"] == {"p": 1, "q": 2}


def test_item10_yaml_nesting_depth_is_bounded() -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml("a:\n  b: " + "[" * 200 + "]" * 200 + "\n", file="f.yaml")
    [problem] = problems(info)
    assert problem.startswith("f.yaml:2:") and "nest" in problem, problem


@pytest.mark.parametrize(
    "query",
    ["(" * 300 + "kv" + ")" * 300, "NOT " * 2000 + "kv", "-(" * 300 + "kv", "title:" + "(" * 300],
)
def test_item10_deep_query_is_a_positioned_error(query: str) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        parse_query(query)
    assert "deep" in info.value.message and 1 < info.value.column < len(query)


def test_item10_deep_query_in_a_subscribers_file(tmp_path: Path) -> None:
    path = tmp_path / "subscribers.yaml"
    path.write_text(deep_query())
    with pytest.raises(ConfigError) as info:
        app.load_subscriber_file(path)
    [problem] = problems(info)
    assert problem.startswith(f"{path}:6:") and "subscribers[0].rules[0].query" in problem


@pytest.mark.parametrize("where", ["settings", "subscribers"])
def test_item10_latin1_byte_is_a_positioned_error(tmp_path: Path, where: str) -> None:
    path = tmp_path / f"{where}.yaml"
    path.write_bytes(b"# caf\xc3\xa9 ok\nsubscribers:\n  - email: jos\xe9@example.org\n")
    load = load_settings if where == "settings" else app.load_subscriber_file
    with pytest.raises(ConfigError) as info:
        load(path)
    [problem] = problems(info)
    assert problem.startswith(f"{path}:3:15: ") and "UTF-8" in problem, problem


def test_item10_check_answers_an_alias_bomb_at_once(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    config = write_config(tmp_path, source=http_server.url, smtp_port=smtp_server.port)
    (tmp_path / "subscribers.yaml").write_text(alias_bomb())
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "digestd", "--config", str(config), "check"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert time.monotonic() - started < 10
    assert done.returncode == 2, done.stderr
    assert f"{tmp_path / 'subscribers.yaml'}:" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("lol") < 3, done.stderr[:2000]


def refusals(log: Path) -> int:
    return log.read_text().count("still running on the previous configuration")


def test_item10_bad_reloads_keep_the_old_config_and_the_next_one_applies(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    listing = Listing(http_server, [item("2611.00001", "KV cache tricks")])
    config = write_config(tmp_path, source=http_server.url, smtp_port=smtp_server.port)
    subs, log = tmp_path / "subscribers.yaml", tmp_path / "daemon.log"
    good_settings = config.read_bytes()
    bad_files = [
        (subs, SUBSCRIBERS.encode().replace(b"bob@", b"b\xf6b@")),
        (config, good_settings.replace(b"state:", b"# Jos\xe9\nstate:")),
        (subs, alias_bomb().encode()),
        (subs, deep_query().encode()),
    ]
    with daemon(config, log) as proc:
        wait_for(lambda: to(smtp_server, "bob@example.org"), what="for bob's first alert")
        for n, (path, text) in enumerate(bad_files, start=1):
            path.write_bytes(text)
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda n=n: refusals(log) == n, timeout=15, what=f"for refusal {n}")
            assert f"reload refused: {path}:" in log.read_text()
            config.write_bytes(good_settings)
        # Bob leaves with a valid file: the reloader is still alive and applies it.
        subs.write_text(SUBSCRIBERS.split("  - email: bob")[0])
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded subscribers=1" in log.read_text(), what="for the good reload")
        listing.items = [*listing.items, item("2611.00002", "KV cache again")]
        wait_for(lambda: len(to(smtp_server, "alice@example.org")) == 2, what="alice's 2nd alert")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    text = log.read_text()
    assert len(to(smtp_server, "bob@example.org")) == 1
    assert "Traceback" not in text and text.count("lol") < 3 and "RecursionError" not in text
    assert len(text) < 20_000, text[-3000:]


async def test_item10_an_unexpected_reload_failure_leaves_the_reloader_alive(
    tmp_path: Path,
    http_server: LocalHTTPServer,
    smtp_server: SMTPTestServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fault no file should produce any more (a bound we missed): mocked, as no peer can."""
    path = write_config(tmp_path, source=http_server.url, smtp_port=smtp_server.port)
    config = load_config(path)
    deps = app.open_deps(config.settings, now=utcnow(), subscribers=config.subscribers)
    daemon = Daemon(deps, poll_every=timedelta(minutes=30), config=config)

    def blow_up(path: Path) -> Config:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("digestd.service.reloader.load_config", blow_up)
    caplog.set_level(logging.INFO, logger="digestd")
    reloader = asyncio.create_task(daemon.reloader.serve())
    try:
        daemon.request_reload()
        await until(lambda: "reload failed error=RecursionError" in caplog.text)
        monkeypatch.setattr("digestd.service.reloader.load_config", load_config)
        path.with_name("subscribers.yaml").write_text(SUBSCRIBERS.split("  - email: bob")[0])
        daemon.request_reload()
        await until(lambda: "reloaded subscribers=1" in caplog.text)
    finally:
        reloader.cancel()
        await app.close(deps)


async def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_item10_an_anchor_named_again_is_counted_again() -> None:
    """Anchoring a small value, aliasing it, then reusing the name for a big one must not let the
    big one through at the small one's size."""
    text = "a: &x 1\nb: *x\n"
    text += "y: &y [" + ",".join(["1"] * 300) + "]\n"  # written out: 301 values
    text += "x: &x [" + ",".join(["*y"] * 300) + "]\n"  # 90,301 values: within the bound
    text += "c: [" + ",".join(["*x"] * 10) + "]\n"  # ten times that: not
    with pytest.raises(ConfigError) as info:
        load_yaml(text, file="f.yaml")
    assert "expands the document" in problems(info)[0]


async def test_item10_a_background_task_never_ends_silently(
    tmp_path: Path,
    http_server: LocalHTTPServer,
    smtp_server: SMTPTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_config(tmp_path, source=http_server.url, smtp_port=smtp_server.port)
    config = load_config(path)
    deps = app.open_deps(config.settings, now=utcnow(), subscribers=config.subscribers)
    daemon = Daemon(deps, poll_every=timedelta(minutes=30), config=config)

    async def broken() -> None:
        raise MemoryError("out of memory")

    try:
        daemon._spawn(broken(), "config-watch")
        await until(lambda: "background task config-watch stopped" in caplog.text)
        assert "MemoryError" in caplog.text
    finally:
        await app.close(deps)
