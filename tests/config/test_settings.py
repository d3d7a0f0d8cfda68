"""The settings file: defaults, env overrides, positioned errors, secrets kept out of output."""

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from digestd.config.sections import parse_duration
from digestd.config.settings import load_settings
from digestd.core.errors import ConfigError
from digestd.service.wiring import make_mailer

GOOD = """\
source:
  kind: huggingface
  url: https://huggingface.co/api/daily_papers
  poll_every: 30m
state: var/digestd.sqlite3
delivery:
  kind: smtp
  host: localhost
  port: 25
  security: starttls
  from: "Paper Digest <digest@example.org>"
  path: var/mail
subscribers: subscribers.yaml
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "digestd.yaml"
    path.write_text(text)
    return path


def test_issue_example_loads_and_resolves_paths(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, GOOD))
    assert s.source.poll_every == timedelta(minutes=30)
    assert s.state == tmp_path / "var/digestd.sqlite3"
    assert s.subscribers == tmp_path / "subscribers.yaml"
    assert s.delivery.envelope_from == "digest@example.org"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGESTD_DELIVERY__HOST", "relay.example.org")
    monkeypatch.setenv("DIGESTD_DELIVERY__PORT", "587")
    s = load_settings(write(tmp_path, GOOD))
    assert (s.delivery.host, s.delivery.port) == ("relay.example.org", 587)


def test_password_from_env_is_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGESTD_DELIVERY__PASSWORD", "hunter2-secret")
    s = load_settings(
        write(tmp_path, GOOD.replace("  path: var/mail", "  path: var/mail\n  username: u"))
    )
    assert s.smtp_password() == "hunter2-secret"
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.redacted())


def test_password_file_and_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    text = GOOD.replace("  path: var/mail", "  path: var/mail\n  username: u\n  password_file: pw")
    assert load_settings(write(tmp_path, text)).smtp_password() == "from-file"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "smtp_password").write_text("from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_settings(write(tmp_path, GOOD)).smtp_password() == "from-credential"


def test_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad = GOOD.replace("security: starttls", "security: starttlz").replace(
        "poll_every: 30m", "poll_every: soon"
    )
    path = write(tmp_path, bad)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    text = str(info.value)
    assert f"{path}:4:" in text and "source.poll_every" in text
    assert f"{path}:10:13: delivery.security" in text and "not one of none, starttls, tls" in text


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stat"):
        load_settings(write(tmp_path, GOOD + "stat: typo\n"))


def test_credentials_need_tls(tmp_path: Path) -> None:
    text = GOOD.replace("security: starttls", "security: none").replace(
        "  path: var/mail", "  path: var/mail\n  username: u"
    )
    with pytest.raises(ConfigError, match="starttls or tls"):
        load_settings(write(tmp_path, text))


@pytest.mark.parametrize(
    "secret", ["  password: hunter2-secret", "  password_file: pw"], ids=["password", "file"]
)
def test_i11_password_without_username_is_a_positioned_error(tmp_path: Path, secret: str) -> None:
    """Issue 12 item 11: the password was silently ignored and mail went out unauthenticated."""
    (tmp_path / "pw").write_text("hunter2-secret\n")
    path = write(tmp_path, GOOD.replace("  path: var/mail", f"  path: var/mail\n{secret}"))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    text = str(info.value)
    assert f"{path}:7:" in text and "delivery" in text  # the section that lacks the username
    assert "username" in text and "never be used" in text
    assert "hunter2" not in text


def test_i11_password_without_username_is_fine_for_maildir(tmp_path: Path) -> None:
    text = GOOD.replace("kind: smtp", "kind: maildir").replace(
        "  path: var/mail", "  path: var/mail\n  password: x"
    )
    assert load_settings(write(tmp_path, text)).delivery.kind == "maildir"


def check(config: Path) -> subprocess.CompletedProcess[str]:
    (config.parent / "subscribers.yaml").write_text("subscribers:\n  - email: a@example.org\n")
    cmd = [sys.executable, "-m", "digestd", "--config", str(config), "check"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=50)


def test_i11_check_warns_when_certificates_are_not_checked(tmp_path: Path) -> None:
    text = GOOD.replace("  path: var/mail", "  path: var/mail\n  validate_certs: false")
    result = check(write(tmp_path, text))
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    (warning,) = [line for line in lines if line.startswith("!") and "validate_certs" in line]
    assert "validate_certs is false" in warning and "not checked" in warning
    quiet = check(write(tmp_path, GOOD))
    assert quiet.returncode == 0, quiet.stderr
    assert "not checked" not in quiet.stdout


def test_i11_check_reports_a_password_without_username(tmp_path: Path) -> None:
    result = check(
        write(
            tmp_path,
            GOOD.replace("  path: var/mail", "  path: var/mail\n  password: hunter2-secret"),
        )
    )
    assert result.returncode == 2
    assert f"{tmp_path / 'digestd.yaml'}:7:" in result.stderr and "username" in result.stderr
    assert "hunter2" not in result.stderr


def test_yaml_syntax_error_is_positioned(tmp_path: Path) -> None:
    path = write(tmp_path, "source:\n  kind: [huggingface\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}:")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("1h30m", 5400), ("7d", 604800), ("90s", 90), (45, 45)]
)
def test_durations(text: object, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "soon", "30x", "m30"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("name", ["config/digestd.example.yaml", "config/demo/digestd.yaml"])
def test_shipped_settings_files_validate(name: str) -> None:
    """The files an admin starts from must load as they are."""
    settings = load_settings(Path(__file__).resolve().parents[2] / name)
    assert settings.all_sources()


def test_readme_configuration_block_validates(tmp_path: Path) -> None:
    """The first `# digestd.yaml` block of the README is what newcomers copy: it must load."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("```yaml\n# digestd.yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "smtp_password").write_text("x")
    settings = load_settings(write(tmp_path, block))
    assert settings.delivery.username == "digest"


def test_i11_unchecked_certificates_are_logged_at_every_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = GOOD.replace("  path: var/mail", "  path: var/mail\n  validate_certs: false")
    make_mailer(load_settings(write(tmp_path, text)))
    assert "validate_certs is false" in caplog.text and "! " not in caplog.text


def test_i13_every_settings_address_is_checked_as_the_builder_does(tmp_path: Path) -> None:
    text = GOOD.replace('"Paper Digest <digest@example.org>"', '"Paper Digest digest@example.org"')
    text = text.replace(
        "  path: var/mail\n", "  path: var/mail\n  unsubscribe_mailto: \u00e5@example.org\n"
    )
    text += 'admins: [ops@example.org, "r\u200boot@example.org"]\n'
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    found = [str(p).split(": ", 1)[1] for p in info.value.problems]
    assert [f.split(":")[0] for f in found] == [
        "delivery.from",
        "delivery.unsubscribe_mailto",
        "admins[1]",
    ], found
    assert "(expected one local@domain)" in found[0]
    assert "needs SMTPUTF8" in found[1]
    assert "U+200B" in found[2]
    lines = [p.line for p in info.value.problems]
    assert lines == [11, 13, 15], lines


def test_i13_idn_sender_is_sent_as_a_labels(tmp_path: Path) -> None:
    text = GOOD.replace("digest@example.org", "digest@b\u00fccher.de")
    text += "admins: [root@localhost]\n"
    s = load_settings(write(tmp_path, text))
    assert s.delivery.sender == '"Paper Digest" <digest@xn--bcher-kva.de>'
    assert s.delivery.envelope_from == "digest@xn--bcher-kva.de"
    assert s.admins == ["root@localhost"]
