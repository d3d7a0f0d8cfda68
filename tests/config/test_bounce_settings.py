"""The `delivery.verp` address and the `bounces:` section: checked like every setting, paths made
relative to the settings file, the IMAP password never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from digestd.config.settings import Settings, load_settings
from digestd.core.errors import ConfigError

BASE = """\
state: var/digestd.sqlite3
subscribers: subscribers.yaml
delivery:
  kind: maildir
  path: var/mail
"""


def load(tmp_path: Path, extra: str) -> Settings:
    path = tmp_path / "digestd.yaml"
    path.write_text(BASE + extra)
    return load_settings(path)


def test_off_by_default(tmp_path: Path) -> None:
    settings = load(tmp_path, "")
    assert settings.delivery.verp is None
    assert not settings.bounces.enabled


def test_a_full_section_loads_with_paths_beside_the_file(tmp_path: Path) -> None:
    (tmp_path / "imap_pw").write_text("s3cret-imap\n")
    settings = load(
        tmp_path,
        "  verp: bounces@lab.example.org\n"
        "bounces:\n  maildir: var/bounces\n  check_every: 10m\n  processed: move\n"
        "  imap:\n    host: imap.example.org\n    username: digestd\n"
        "    password_file: imap_pw\n    folder: Bounces\n",
    )
    s = settings
    assert s.delivery.verp == "bounces@lab.example.org"
    assert s.bounces.maildir == tmp_path / "var/bounces"
    assert s.bounces.imap.port == 993 and s.bounces.imap.security == "tls"
    assert s.imap_password() == "s3cret-imap"
    assert "s3cret" not in str(s.in_force()) and "s3cret" not in repr(s)


def test_an_imap_password_from_the_environment_is_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGESTD_BOUNCES__IMAP__PASSWORD", "env-imap-secret")
    s = load(tmp_path, "bounces:\n  imap:\n    host: imap.example.org\n    username: d\n")
    assert s.imap_password() == "env-imap-secret"
    assert "env-imap-secret" not in str(s.in_force())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  verp: bounces+x@lab.example.org\n", "must not contain '+'"),
        ("  verp: not an address\n", "delivery.verp"),
        (f"  verp: {'b' * 32}@lab.example.org\n", "at most 31"),
        ("bounces:\n  imap:\n    host: h.example.org\n    username: u\n", "password_file"),
        (
            "bounces:\n  imap:\n    host: imap.example.org\n    username: u\n"
            "    password_file: pw\n    security: none\n",
            "only to localhost",
        ),
        ("bounces:\n  processed: archive\n", "bounces.processed"),
        ("bounces:\n  move_to: ../escape\n", "bounces.move_to"),
        ("bounces:\n  check_every: 0s\n", "bounces.check_every"),
    ],
)
def test_bad_values_are_positioned_errors(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, extra)
    assert message in str(raised.value)


def test_an_unreadable_password_file_is_a_config_error(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        "bounces:\n  imap:\n    host: imap.example.org\n    username: u\n    password_file: nope\n",
    )
    with pytest.raises(ConfigError) as raised:
        s.imap_password()
    assert "bounces.imap.password_file" in str(raised.value)


def test_check_warns_when_verp_and_the_inboxes_do_not_go_together(tmp_path: Path) -> None:
    assert load(tmp_path, "").bounce_warnings() == []
    only_verp = load(tmp_path, "  verp: bounces@lab.example.org\n").bounce_warnings()
    assert len(only_verp) == 1 and "never read" in only_verp[0]
    only_inbox = load(tmp_path, "bounces:\n  maildir: b\n").bounce_warnings()
    assert len(only_inbox) == 1 and "delivery.verp is not set" in only_inbox[0]
    both = load(tmp_path, "  verp: bounces@lab.example.org\nbounces:\n  maildir: b\n")
    assert both.bounce_warnings() == []
