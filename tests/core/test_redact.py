"""Issue 12 item 11: what reaches a person holds no URL credentials and no control bytes."""

from __future__ import annotations

import logging

import pytest

from digestd.config.settings import Settings
from digestd.core.redact import redact, redact_url, safe_text, secrets_of
from digestd.service.logs import _JsonFormatter, _KeyValueFormatter

URL = "https://user:pw@host.example/feed?token=SECRET&x=1"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (URL, "https://***@host.example/feed?token=***&x=1"),
        ("https://h.example/f?apiKey=K&api_key=K&key=K&page=2", "https://h.example/f?apiKey=***&api_key=***&key=***&page=2"),
        ("https://h.example/f?X-Amz-Signature=S&sig=S&client_secret=S", "https://h.example/f?X-Amz-Signature=***&sig=***&client_secret=***"),
        ("https://h.example/f?password=P;passwd=P&access_token=T#auth=A", "https://h.example/f?password=***;passwd=***&access_token=***#auth=***"),
        ("https://h.example/feed?design=ok&keyword=kv&signal=1", "https://h.example/feed?design=ok&keyword=kv&signal=1"),
        ("https://token@h.example/", "https://***@h.example/"),
    ],
)  # fmt: skip
def test_item11_redact_url_masks_userinfo_and_secret_looking_values(
    url: str, expected: str
) -> None:
    assert redact_url(url) == expected


def test_item11_redact_finds_urls_and_pairs_in_free_text() -> None:
    text = f"GET {URL}: HTTP 404 Not Found: b'echo token=SECRET, pw'"
    assert redact(text) == (
        "GET https://***@host.example/feed?token=***&x=1: HTTP 404 Not Found: b'echo token=***, pw'"
    )
    # An echo of the secret without its name is found when the caller knows the secrets.
    echoed = redact("the server said SECRET and pw", known=secrets_of(URL))
    assert "SECRET" not in echoed and "***" in echoed
    assert secrets_of(URL) >= {"SECRET"} and "user" not in secrets_of(URL)


def test_item11_safe_text_strips_c0_and_c1_controls_to_one_line() -> None:
    text = "a\x1b[2J\x1b]0;owned\x07b\x9b31mc\x00d\r\ne\u2028f\x7f" + "x" * 2000
    cleaned = safe_text(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in cleaned)
    assert cleaned.startswith("a [2J ]0;owned b 31mc d e f x") and len(cleaned) == 1000


@pytest.mark.parametrize("formatter", [_KeyValueFormatter(), _JsonFormatter()])
def test_item11_every_log_line_is_redacted_and_holds_no_escape(
    formatter: logging.Formatter,
) -> None:
    record = logging.makeLogRecord(
        {"msg": "poll failed url=%s error=%s", "args": (URL, "bad\x1b[2J\x9b1m"), "levelno": 30}
    )
    line = formatter.format(record)
    assert "SECRET" not in line and ":pw@" not in line and "token=***" in line
    assert "\x1b" not in line and "\x9b" not in line


def test_item11_check_shows_source_urls_redacted(tmp_path: object) -> None:
    settings = Settings.model_validate({"sources": [{"name": "lab", "kind": "feed", "url": URL}]})
    (shown,) = settings.redacted()["sources"]
    assert shown["url"] == "https://***@host.example/feed?token=***&x=1"
