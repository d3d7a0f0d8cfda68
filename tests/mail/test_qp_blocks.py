"""Quoted-printable in cached blocks of whole lines: the same bytes as encoding the body at once."""

from __future__ import annotations

import binascii
import random
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_message import is_canonical

from digestd.core.model import Digest, Match, Rendered, Subscriber
from digestd.mail import mime as message
from digestd.mail.render import RenderContext, make_environments
from digestd.mail.shapes import render_personal
from digestd.sources.hf_json import parse_hf_daily

FIXTURES = Path(__file__).parents[1] / "fixtures"


def qp(content: str) -> bytes:
    return message._quoted_printable_checked(content)[0]


def whole(content: str) -> bytes:
    """The reference: the whole body encoded in one call, as before blocks were cached."""
    text = content.replace("\r\n", "\n").replace("\r", "\n")
    data = text.encode("utf-8", "replace")
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return message.undot(encoded).replace(b"\n", b"\r\n")


def test_real_digests_encode_to_the_same_bytes() -> None:
    papers = parse_hf_daily((FIXTURES / "hf_daily_papers_seed.json").read_bytes()).papers[:10]
    envs = make_environments()
    for name in ("Ann", "Bartholomew", None):
        d = Digest(Subscriber("r@example.org", name=name), "digest", tuple(map(Match, papers)))
        ctx = RenderContext("Paper Digest", "Friday", unsubscribe_url="https://x.example/u/t")
        r = render_personal(d, envs, ctx)
        assert qp(r.html) == whole(r.html)
        assert qp(r.text) == whole(r.text)


ALPHABET = ["a", "b", " ", "\t", "\n", "\r\n", "\r", ".", "=", "é", "—", "<tr>", "\n\n", "x" * 90]


@pytest.mark.parametrize("seed", range(200))
def test_random_bodies_encode_to_the_same_bytes(seed: int) -> None:
    rng = random.Random(seed)
    content = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 120)))
    assert qp(content) == whole(content)


def test_a_lone_surrogate_becomes_a_question_mark() -> None:
    assert qp("a\ud800b\n<tr>c") == whole("a\ud800b\n<tr>c")


@pytest.mark.parametrize("seed", range(200))
def test_the_cached_dot_check_agrees_with_a_scan(seed: int) -> None:
    rng = random.Random(seed)
    content = "".join(rng.choice([*ALPHABET, ".", "\n.", "x" * 75 + "."]) for _ in range(60))
    encoded, undotted = message._quoted_printable_checked(content)
    assert undotted == (not encoded.startswith(b".") and b"\n." not in encoded)
    for text, html in ((content, "<p>x</p>"), ("plain", content)):
        rendered = Rendered(subject="s", text=text, html=html)
        built = message.build_message(
            rendered, sender="d@example.org", to="r@example.org", to_name=None,
            message_id="<m@example.org>", date=datetime(2026, 1, 1, tzinfo=UTC),
        )  # fmt: skip
        assert built.canonical == is_canonical(built.whole())


@pytest.mark.parametrize("seed", range(300))
def test_undot_keeps_the_text_and_starts_no_line_with_a_dot(seed: int) -> None:
    rng = random.Random(seed)
    pieces = ["a", " ", ".", "\n", "é", "=", "x" * 80, "et al.", "\t", ". ", "\n.", "x" * 74]
    text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40))).encode()
    encoded = binascii.b2a_qp(text, quotetabs=False, istext=True, header=False)
    undotted = message.undot(encoded)
    assert binascii.a2b_qp(undotted) == text
    assert not undotted.startswith(b".") and b"\n." not in undotted
    longest = max(76, *(len(line) for line in encoded.split(b"\n")))  # b2a_qp's own can be 78
    assert all(len(line) <= longest for line in undotted.split(b"\n"))
    if not encoded.startswith(b".") and b"\n." not in encoded:
        assert undotted == encoded  # nothing to do: b2a_qp's bytes as they were


_UNIT = re.compile(rb"=[0-9A-F]{2}|.", re.S)


def rewrap_by_unit(logical: bytes) -> bytes:
    """The reference re-wrap, one escape or character at a time (what `_rewrap` replaced)."""
    if not logical.startswith(b".") and b"\0." not in logical:
        return logical.replace(b"\0", b"=\n")
    lines, line = [], b""
    for unit in _UNIT.findall(logical.replace(b"\0", b"")):
        if len(line) + len(unit) > message.MAX_LINE - 1:
            lines.append(line + b"=")
            line = b""
        line += b"=2E" if unit == b"." and not line else unit
    return b"\n".join([*lines, line])


@pytest.mark.parametrize("seed", range(300))
def test_rewrap_by_line_equals_rewrap_by_unit(seed: int) -> None:
    rng = random.Random(seed)
    pieces = [".", "..", "x" * 73 + ".", "=", "é", " ", "\t", "a", "\x00", "et al.", "x" * 80]
    text = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 40))).encode()
    encoded = binascii.b2a_qp(text, quotetabs=False, istext=True, header=False)
    for logical in encoded.replace(b"=\n", b"\0").split(b"\n"):
        assert message._rewrap(logical) == rewrap_by_unit(logical)


@pytest.mark.parametrize(
    "name", [None, "", "Ann", "Zoë Ünicode", "x" * 90, "O'Brien", "Ann\nBcc: x"]
)
@pytest.mark.parametrize("web", [None, "https://digest.example.org/view/v0000001"])
def test_a_message_from_its_template_is_the_message_from_the_filled_text(
    name: str | None, web: str | None
) -> None:
    from digestd.mail.parts import Personal
    from digestd.mail.shapes import personal_template, render_personal

    papers = parse_hf_daily((FIXTURES / "hf_daily_papers_seed.json").read_bytes()).papers[:10]
    envs = make_environments()
    digest = Digest(Subscriber("r@example.org", name=name), "digest", tuple(map(Match, papers)))
    ctx = RenderContext(
        "Paper Digest", "Friday", unsubscribe_url="https://x.example/u/tok0001", web_url=web
    )
    args = {
        "sender": "D <d@example.org>", "to": "r@example.org", "to_name": name,
        "message_id": "<m@example.org>", "date": datetime(2026, 1, 1, tzinfo=UTC),
    }  # fmt: skip
    template = personal_template(digest, envs, ctx)
    if name in (None, "Ann", "Zoë Ünicode"):
        assert isinstance(template, Personal)  # the fast path does serve the common case
    fast = message.build_message(template, **args).whole()  # type: ignore[arg-type]
    slow = message.build_message(render_personal(digest, envs, ctx), **args).whole()  # type: ignore[arg-type]
    assert fast == slow and type(fast) is type(slow)
    spliced = message.build_message(template, **args)  # type: ignore[arg-type]
    assert spliced.whole() == fast and type(spliced.whole()) is type(fast)
    if isinstance(template, Personal):  # what each message queues of its own is small
        assert len(spliced.own) < len(fast) // 8
        assert all(len(part.data) >= message.SHARE_MIN for _, part in spliced.parts)
