"""`digestd subscribers list | export | remove` and `status`'s reader counts, through the real
`python -m digestd` process against a real state file (issue 15)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from test_e2e import digestd

from digestd.core.model import Subscriber
from digestd.pipeline.webreaders import web_subscribers
from digestd.rules.readers import ReaderDefaults, reader_spec
from digestd.rules.subscribers import load_subscribers
from digestd.store.sqlite import Store

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SUBSCRIBERS = """\
defaults:
  use: [kv]
rule_sets:
  kv:
    - any: ["kv cache"]
subscribers:
  - email: alice@example.org
    name: Alice
"""


def setup(tmp_path: Path) -> Path:
    (tmp_path / "subscribers.yaml").write_text(SUBSCRIBERS)
    config = tmp_path / "digestd.yaml"
    config.write_text(
        "state: state.sqlite3\nsubscribers: subscribers.yaml\n"
        "delivery: {kind: maildir, path: mail}\n"
        "signup:\n  topics: {kv: KV caches}\n"
        "  defaults: {schedule: '0 6 * * mon', timezone: Europe/Berlin, max_papers: 7}\n"
    )
    with Store(tmp_path / "state.sqlite3") as store:
        r = store.readers
        r.add_pending("carol@example.org", name="Carol «C»", spec=reader_spec(
            topics=["kv"], keywords=["speculative decoding"], query='title:"serving"', alerts=True,
        ), at=T0)  # fmt: skip
        r.confirm("carol@example.org", at=T0)
        r.add_pending("dan@example.org", name=None, spec=reader_spec(keywords=["x1"]), at=T0)
        r.add_pending("ALICE@example.org", name="Web Alice", spec=reader_spec(), at=T0)
        r.confirm("alice@example.org", at=T0)
        r.add_pending("erin@example.org", name="Erin", spec=reader_spec(keywords=["rl"]), at=T0)
        r.confirm("erin@example.org", at=T0)
        r.pause("erin@example.org", until=datetime.now(UTC) + timedelta(weeks=2), at=T0)
    return config


def test_list_shows_both_origins_and_who_wins(tmp_path: Path) -> None:
    config = setup(tmp_path)
    done = digestd(config, "subscribers", "list")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "alice@example.org  yaml  active  Alice",
        "alice@example.org  web  yaml-wins  Web Alice",
        "carol@example.org  web  active  Carol «C»",
        "dan@example.org  web  pending",
        "erin@example.org  web  paused  Erin",
    ]
    web = digestd(config, "subscribers", "list", "--from", "web").stdout
    assert "yaml  active" not in web and "carol@" in web
    assert digestd(config, "subscribers", "list", "--from", "yaml").stdout.count("\n") == 1


def test_export_is_yaml_the_subscribers_file_reads_as_the_same_subscribers(tmp_path: Path) -> None:
    config = setup(tmp_path)
    done = digestd(config, "subscribers", "export")
    assert done.returncode == 0, done.stderr
    exported = yaml.safe_load(done.stdout)["subscribers"]
    assert [e["email"] for e in exported] == ["carol@example.org", "erin@example.org"]
    assert exported[0]["timezone"] == "Europe/Berlin" and exported[0]["max_papers"] == 7
    # Pasted under the file's `subscribers:`, they are served exactly as the web made them.
    indented = "".join("  " + line + "\n" for line in yaml.safe_dump(exported).splitlines())
    adopted = load_subscribers(SUBSCRIBERS + indented, file="subscribers.yaml")
    with Store(tmp_path / "state.sqlite3") as store:
        readers = store.readers.active()
    original = load_subscribers(SUBSCRIBERS, file="subscribers.yaml")
    defaults = ReaderDefaults("0 6 * * mon", "Europe/Berlin", 7)
    web = {s.email: s for s in web_subscribers(readers, original, defaults)}
    for sub in adopted.subscribers[1:]:
        assert isinstance(sub, Subscriber) and sub == web[sub.email]


def test_remove_forgets_a_reader_and_refuses_a_yaml_address(tmp_path: Path) -> None:
    config = setup(tmp_path)
    done = digestd(config, "subscribers", "remove", "Carol@example.org")
    assert done.returncode == 0 and done.stdout == "carol@example.org: removed\n"
    again = digestd(config, "subscribers", "remove", "carol@example.org")
    assert again.returncode == 1 and "is no self-registered reader" in again.stderr
    mixed = digestd(config, "subscribers", "remove", "alice@example.org")
    assert mixed.returncode == 0 and "stays served from there" in mixed.stdout
    yaml_only = digestd(config, "subscribers", "remove", "alice@example.org")
    assert yaml_only.returncode == 1 and "remove it there" in yaml_only.stderr
    assert "Traceback" not in yaml_only.stderr


def test_status_counts_pending_active_and_paused(tmp_path: Path) -> None:
    config = setup(tmp_path)
    with Store(tmp_path / "state.sqlite3") as store:  # a YAML reader paused from their page
        store.readers.pause("alice@example.org", until=datetime.now(UTC) + timedelta(days=9), at=T0)
    done = digestd(config, "status")
    assert done.returncode == 0, done.stderr
    # Carol active; Erin and Alice (whose web row is shadowed by the YAML) paused; Dan pending.
    assert "readers:     1 pending, 1 active, 2 paused" in done.stdout


def test_help_lists_the_subscribers_command(tmp_path: Path) -> None:
    done = digestd(setup(tmp_path), "subscribers", "--help")
    assert done.returncode == 0 and "export" in done.stdout and "remove" in done.stdout


def test_preview_shows_a_web_reader_and_says_when_paused(tmp_path: Path) -> None:
    config = setup(tmp_path)
    carol = digestd(config, "preview", "carol@example.org")
    assert carol.returncode == 0, carol.stderr
    assert carol.stdout.startswith("Subject:") and "store is empty" in carol.stderr
    erin = digestd(config, "preview", "erin@example.org")
    assert erin.returncode == 0 and "erin@example.org is paused until" in erin.stderr
    dan = digestd(config, "preview", "dan@example.org")  # pending: not served yet
    assert dan.returncode == 1 and "nor a confirmed web sign-up" in dan.stderr
