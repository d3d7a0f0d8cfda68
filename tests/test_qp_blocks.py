"""Quoted-printable in cached blocks of whole lines: the same bytes as encoding the body at once."""

from __future__ import annotations

import binascii
import random
from pathlib import Path

import pytest

from digestd import message
from digestd.model import Digest, Match, Subscriber
from digestd.personal import render_personal
from digestd.render import RenderContext, make_environments
from digestd.sources.hf_json import parse_hf_daily

FIXTURES = Path(__file__).parent / "fixtures"


def whole(content: str) -> bytes:
    """The reference: the whole body encoded in one call, as before blocks were cached."""
    text = content.replace("\r\n", "\n").replace("\r", "\n")
    data = text.encode("utf-8", "replace")
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).replace(b"\n", b"\r\n")


def test_real_digests_encode_to_the_same_bytes() -> None:
    papers = parse_hf_daily((FIXTURES / "hf_daily_papers_seed.json").read_bytes()).papers[:10]
    envs = make_environments()
    for name in ("Ann", "Bartholomew", None):
        d = Digest(Subscriber("r@example.org", name=name), "digest", tuple(map(Match, papers)))
        ctx = RenderContext("Paper Digest", "Friday", unsubscribe_url="https://x.example/u/t")
        r = render_personal(d, envs, ctx)
        assert message._quoted_printable(r.html) == whole(r.html)
        assert message._quoted_printable(r.text) == whole(r.text)


ALPHABET = ["a", "b", " ", "\t", "\n", "\r\n", "\r", ".", "=", "é", "—", "<tr>", "\n\n", "x" * 90]


@pytest.mark.parametrize("seed", range(200))
def test_random_bodies_encode_to_the_same_bytes(seed: int) -> None:
    rng = random.Random(seed)
    content = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 120)))
    assert message._quoted_printable(content) == whole(content)


def test_a_lone_surrogate_becomes_a_question_mark() -> None:
    assert message._quoted_printable("a\ud800b\n<tr>c") == whole("a\ud800b\n<tr>c")
