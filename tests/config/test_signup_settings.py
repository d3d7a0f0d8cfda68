"""The `signup:` section: defaults, validation with positions, and `digestd check`'s cross-check
of its topics against the subscribers file's rule sets."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from digestd.config.settings import load_settings
from digestd.core.errors import ConfigError

SUBSCRIBERS = """\
rule_sets:
  llm-systems:
    - any: ["kv cache"]
subscribers:
  - email: alice@example.org
"""
BASE = """\
state: var/state.sqlite3
delivery: {kind: maildir, path: var/mail}
subscribers: subscribers.yaml
"""


def write(tmp_path: Path, signup: str) -> Path:
    (tmp_path / "subscribers.yaml").write_text(SUBSCRIBERS)
    path = tmp_path / "digestd.yaml"
    path.write_text(BASE + signup)
    return path


def test_defaults_are_off_and_safe(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "")).signup
    assert not s.enabled and s.allowed_domains == [] and s.topics == {}
    assert s.confirm_within == timedelta(hours=48) and s.confirm_every == timedelta(minutes=10)
    assert s.domain_allowed("anyone@anywhere.example")


def test_a_full_section_loads(tmp_path: Path) -> None:
    s = load_settings(
        write(
            tmp_path,
            """\
signup:
  enabled: true
  allowed_domains: [Lab.Example.org]
  topics: {llm-systems: "LLM systems"}
  defaults: {schedule: "0 6 * * mon", timezone: Europe/Berlin, max_papers: 10}
  confirm_within: 24h
""",
        )
    ).signup
    assert s.enabled and s.topics == {"llm-systems": "LLM systems"}
    assert s.defaults.timezone == "Europe/Berlin" and s.confirm_within == timedelta(hours=24)
    assert s.domain_allowed("ann@lab.example.org") and s.domain_allowed("b@x.lab.example.org")
    assert not s.domain_allowed("eve@evil-lab.example.org")
    assert not s.domain_allowed("eve@lab.example.org.evil.example")


def test_problems_are_positioned(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
signup:
  topics: {"bad name": x}
  defaults: {schedule: "0 7 * *", timezone: Mars/Olympus}
  confirm_within: 0s
  allowed_domains: ["not a domain"]
  enable: true
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    text = [str(p) for p in exc.value.problems]
    where = {p.field: (p.line, p.column) for p in exc.value.problems}
    assert where["signup.defaults.schedule"] == (6, 24)
    assert any("unknown timezone 'Mars/Olympus'" in t for t in text)
    assert any("signup.confirm_within: must be more than 0s" in t for t in text)
    assert any(t.startswith(f"{path}:8:") and "allowed_domains" in t for t in text)
    assert any("enable" in p.field for p in exc.value.problems)


def test_check_refuses_a_topic_that_is_no_rule_set(tmp_path: Path) -> None:
    path = write(tmp_path, 'signup:\n  topics:\n    llm-systems: LLM\n    robots: "Robots"\n')
    done = subprocess.run(
        [sys.executable, "-m", "digestd", "--config", str(path), "check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{path}:7:5: signup.topics.robots: unknown rule set 'robots'" in done.stderr
    assert "known: llm-systems" in done.stderr


def test_a_reload_refuses_a_topic_that_is_no_rule_set(tmp_path: Path) -> None:
    from digestd.service.reload import load_config

    path = write(tmp_path, "signup:\n  topics: {llm-systems: LLM}\n")
    assert load_config(path).settings.signup.topics == {"llm-systems": "LLM"}
    path = write(tmp_path, "signup:\n  topics: {robots: Robots}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert [p.field for p in exc.value.problems] == ["signup.topics.robots"]


def test_check_shows_the_section_in_force(tmp_path: Path) -> None:
    off = load_settings(write(tmp_path, "signup:\n  topics: {llm-systems: LLM}\n"))
    assert off.in_force()["signup"] == {"enabled": False}
    on = load_settings(write(tmp_path, "signup:\n  enabled: true\n  topics: {llm-systems: LLM}\n"))
    assert on.in_force()["signup"]["topics"] == {"llm-systems": "LLM"}
