"""The pure feed parsers on fixtures in the real formats, and every kind of malformed feed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from digestd.core.errors import SourceError
from digestd.core.merge import merge, merge_all
from digestd.core.model import Authority, Paper, is_arxiv_id
from digestd.sources.arxiv_xml import ANNOUNCE_TYPES, parse_arxiv_api, parse_arxiv_rss
from digestd.sources.feed_xml import parse_feed
from digestd.sources.xmlfeed import arxiv_id_of_url, check_xml, find_arxiv_id, split_version

FIXTURES = Path(__file__).parents[1] / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# arXiv API ----------------------------------------------------------------------------------


def test_api_entry_keeps_version_categories_primary_first_and_abstract() -> None:
    page = parse_arxiv_api(fixture("arxiv_api_query.xml"))
    assert (page.entries, page.total) == (3, 3)
    first, revised, real = page.result.papers
    assert first.id == "2608.20001" and first.version == 1
    assert first.title == "Sparse Mixture-of-Experts Routing for Long-Context Language Models"
    assert first.categories == ("cs.CL", "cs.LG") and first.primary_category == "cs.CL"
    assert first.authors == ("Mei Tanaka", "Jonas Weber")
    assert first.abstract.startswith("We route tokens") and "\n" not in first.abstract
    assert first.published_at == datetime(2026, 8, 11, 17, 59, 58, tzinfo=UTC)
    assert first.url == "https://arxiv.org/abs/2608.20001"
    assert first.pdf_url == "https://arxiv.org/pdf/2608.20001"
    assert (revised.id, revised.version) == ("2608.09888", 2)
    # The verbatim real entry: primary category first even though it is listed first anyway.
    assert real.id == "2002.00741" and real.categories == ("cs.IR", "cs.CL", "cs.LG")
    assert real.title.startswith("Déjà vu")


def test_api_error_entry_is_a_failure_not_an_empty_page() -> None:
    with pytest.raises(SourceError, match="arXiv API error: incorrect id format for 1234.12345"):
        parse_arxiv_api(fixture("arxiv_api_error.xml"))


def test_api_entry_without_an_arxiv_id_is_a_problem_not_a_failure() -> None:
    raw = fixture("arxiv_api_query.xml").replace(
        b"<id>http://arxiv.org/abs/2608.20001v1</id>", b"<id>urn:nothing</id>"
    )
    page = parse_arxiv_api(raw)
    assert len(page.result.papers) == 2
    assert "not an arXiv id" in page.result.problems[0].reason


# arXiv RSS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "ids"),
    [
        (("new",), ["2608.20001"]),
        (("new", "cross"), ["2608.20001", "2608.20002"]),
        (("replace",), ["2608.09888"]),
        (("replace-cross",), ["2607.11111"]),
        (ANNOUNCE_TYPES, ["2608.20001", "2608.20002", "2608.09888", "2607.11111"]),
    ],
)
def test_rss_keeps_the_announce_types_asked_for(types: tuple[str, ...], ids: list[str]) -> None:
    result = parse_arxiv_rss(fixture("arxiv_rss_cs_lg.xml"), announce_types=types)
    assert [p.id for p in result.papers] == ids
    assert result.problems == ()


def test_rss_item_fields() -> None:
    papers = parse_arxiv_rss(fixture("arxiv_rss_cs_lg.xml"), announce_types=ANNOUNCE_TYPES).papers
    new, cross, replaced, replaced_cross = papers
    assert new.abstract.startswith("We route tokens") and "Announce Type" not in new.abstract
    assert cross.abstract == "We show $d < 2$ tracking & more, in linear time."
    assert cross.categories == ("hep-ex", "cs.LG")
    assert replaced.version == 3 and replaced.authors[0] == "Björn Engdahl"
    assert replaced_cross.authors == ("Ana Souza", "Wei Chen")
    assert new.published_at == datetime(2026, 8, 12, 4, 0, tzinfo=UTC)


def test_rss_announce_type_read_from_the_description_when_the_element_is_missing() -> None:
    raw = fixture("arxiv_rss_cs_lg.xml").replace(
        b"<arxiv:announce_type>cross</arxiv:announce_type>", b""
    )
    ids = [p.id for p in parse_arxiv_rss(raw, announce_types=("cross",)).papers]
    assert ids == ["2608.20002"]


def test_weekend_rss_without_items_is_an_empty_success() -> None:
    raw = b'<?xml version="1.0"?><rss version="2.0"><channel><title>cs.LG</title></channel></rss>'
    assert parse_arxiv_rss(raw).papers == ()


# Generic feeds ------------------------------------------------------------------------------


def test_atom_feed_identity_links_and_html_text() -> None:
    result = parse_feed(fixture("feed_atom.xml"), base_url="https://lab.example.org/feed.atom")
    arxiv, post = result.papers
    # The arXiv id, not the tag: URI; a feed's version claim is not believed (item 9).
    assert (arxiv.id, arxiv.version) == ("2608.20001", None)
    assert arxiv.categories == ("cs.CL",)  # "reading-group" is no arXiv category
    assert arxiv.abstract == "This week: sparse experts & the KV cache."
    assert post.id == "feed:tag:lab.example.org,2026:post-7" and not post.is_arxiv
    assert post.title == "Our FPGA accelerator, explained"
    assert post.link == post.url == "https://lab.example.org/posts/fpga-accelerator"
    assert post.pdf_url is None
    assert "alert(1)" not in post.abstract
    assert post.authors == ("Ada Lovelace", "Alan Turing")
    assert post.published_at == datetime(2026, 8, 11, 8, 0, tzinfo=UTC)
    assert [p.index for p in result.problems] == [2]  # the untitled entry


def test_rss2_feed_in_latin1_guid_then_link() -> None:
    result = parse_feed(fixture("feed_rss2.xml"))
    hf, interview, link_only = result.papers
    assert hf.id == "2608.15089" and hf.url == "https://arxiv.org/abs/2608.15089"
    assert interview.id == "feed:news-2026-08-interview"
    assert interview.title == "Café chat: interview with a compiler engineer"
    assert link_only.id == "feed:https://news.example.com/2026/08/link-only"
    assert link_only.abstract == "Ünïcode in Latin-1: Müller"
    assert "neither a GUID nor a link" in result.problems[0].reason


# Malformed feeds: each fails the whole poll with a clear reason ----------------------------

ATOM = fixture("arxiv_api_query.xml")
MALFORMED = {
    "empty body": (b"", "empty body"),
    "whitespace only": (b"  \n", "empty body"),
    "truncated": (ATOM[: len(ATOM) // 2], "truncated body"),
    "xml error": (b"<?xml version='1.0'?><feed><entry></feed>", "XML error at line 1"),
    "html page with 200": (
        b"<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head></html>",
        "HTML page, not a feed",
    ),
    "xhtml page": (b'<html xmlns="http://www.w3.org/1999/xhtml"><body/></html>', "HTML page"),
    "wrong encoding": (
        "<?xml version='1.0' encoding='utf-8'?><feed><title>Café</title></feed>".encode("latin-1"),
        "not valid utf-8 at byte",
    ),
    "unknown encoding": (b"<?xml version='1.0' encoding='klingon'?><feed/>", "unknown encoding"),
    "entity bomb": (
        b'<?xml version="1.0"?><!DOCTYPE f [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><feed>&b;</feed>',
        "declares XML entities",
    ),
    "json instead of xml": (b'{"error": "nope"}', "XML error"),
    "wrong root": (b"<opml version='2.0'><body/></opml>", "root element is <opml>"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("parser", ["api", "rss", "feed"])
def test_malformed_bodies_fail_with_a_clear_reason(case: str, parser: str) -> None:
    raw, reason = MALFORMED[case]
    with pytest.raises(SourceError) as info:
        {"api": parse_arxiv_api, "rss": parse_arxiv_rss, "feed": parse_feed}[parser](raw)
    assert reason in str(info.value)
    assert not info.value.transient
    assert "\n" not in str(info.value)


def test_a_feed_of_the_wrong_kind_is_refused_by_the_arxiv_parsers() -> None:
    with pytest.raises(SourceError, match=r"root element is <rss>, expected <feed>"):
        parse_arxiv_api(fixture("arxiv_rss_cs_lg.xml"))
    with pytest.raises(SourceError, match=r"root element is <feed>, expected <rss>"):
        parse_arxiv_rss(fixture("feed_atom.xml"))


def test_check_xml_accepts_a_bom_and_a_declared_encoding() -> None:
    raw = "\ufeff<?xml version='1.0' encoding='utf-8'?><rss><channel/></rss>".encode()
    assert check_xml(raw, roots=("rss",)).tag == "rss"


# Identifiers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://arxiv.org/abs/2002.00741v1", ("2002.00741", 1)),
        ("https://arxiv.org/pdf/2502.08807v12", ("2502.08807", 12)),
        ("oai:arXiv.org:2609.09159v1", ("2609.09159", 1)),
        ("arXiv:0704.0001", ("0704.0001", None)),
        ("https://arxiv.org/abs/hep-th/9901001v2", ("hep-th/9901001", 2)),
        ("https://huggingface.co/papers/2608.15089", ("2608.15089", None)),
        ("https://example.org/2608.15089", None),
    ],
)
def test_find_arxiv_id(text: str, expected: tuple[str, int | None] | None) -> None:
    assert find_arxiv_id(text) == expected


def test_split_version() -> None:
    assert split_version("2502.08807v2") == ("2502.08807", 2)
    assert split_version("math.GT/0309136") == ("math.GT/0309136", None)
    assert split_version("not an id") is None


# Merging ------------------------------------------------------------------------------------

T0 = datetime(2026, 8, 11, tzinfo=UTC)


def test_merge_takes_each_fact_from_the_source_that_knows_it() -> None:
    hf = Paper(
        id="2608.09888", title="HF title", abstract="HF abstract", upvotes=781, comments=4,
        ai_summary="tl;dr", on_huggingface=True, sources=("hf",), first_seen_at=T0,
        published_at=T0,
    )  # fmt: skip
    v2 = Paper(
        id="2608.09888", title="v2 title", abstract="v2 abstract", categories=("cs.LG", "cs.AI"),
        version=2, sources=("arxiv",), published_at=T0.replace(day=12),
    )  # fmt: skip
    v1 = Paper(id="2608.09888", title="v1 title", abstract="v1", version=1, sources=("rss",))

    merged = merge(merge(hf, v2), v1)

    assert (merged.title, merged.abstract, merged.version) == ("v2 title", "v2 abstract", 2)
    assert (merged.upvotes, merged.comments, merged.ai_summary) == (781, 4, "tl;dr")
    assert merged.categories == ("cs.LG", "cs.AI")
    assert merged.sources == ("hf", "arxiv", "rss")
    assert merged.on_huggingface and merged.url == "https://huggingface.co/papers/2608.09888"
    assert merged.first_seen_at == T0 and merged.published_at == T0
    # Later HF refreshes move the upvotes but never the arXiv text.
    again = merge(merged, Paper(id="2608.09888", title="HF", abstract="", upvotes=900,
                                on_huggingface=True, sources=("hf",)))  # fmt: skip
    assert (again.upvotes, again.title, again.sources) == (900, "v2 title", ("hf", "arxiv", "rss"))


def test_merge_all_folds_duplicates_in_one_batch() -> None:
    a = Paper(id="1", title="a", abstract="", version=1)
    b = Paper(id="1", title="b", abstract="", version=2)
    c = Paper(id="2", title="c", abstract="")
    assert [(p.id, p.title) for p in merge_all([a, c, b])] == [("1", "b"), ("2", "c")]


# Issue 12 item 9: a feed cannot rewrite a paper ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://arxiv.org/abs/2502.60001v2", ("2502.60001", 2)),
        ("http://export.arxiv.org/abs/hep-th/9901001", ("hep-th/9901001", None)),
        ("https://arxiv.org/pdf/2502.60001v1.pdf", ("2502.60001", 1)),
        ("https://huggingface.co/papers/2502.60001", ("2502.60001", None)),
        ("https://evil.example/x?arxiv.org/abs/2502.60001v10000", None),
        ("https://evil.example/arxiv.org/abs/2502.60001", None),
        ("https://arxiv.org.evil.example/abs/2502.60001", None),
        ("https://arxiv.org@evil.example/abs/2502.60001", None),
        ("https://evil.example/#arxiv.org/abs/2502.60001", None),
        ("https://arxiv.org/abs/2502.60001/../../../evil", None),
        ("https://arxiv.org/list/cs.LG?2502.60001", None),
        ("https://huggingface.co/evil/papers/2502.60001", None),
        ("javascript:arxiv.org/abs/2502.60001", None),
    ],
)
def test_item9_an_arxiv_id_comes_only_from_a_papers_page_on_arxiv_or_hf(
    url: str, expected: tuple[str, int | None] | None
) -> None:
    assert arxiv_id_of_url(url) == expected


def feed_of(link: str, guid: str = "") -> bytes:
    guid_tag = f"<guid>{guid}</guid>" if guid else ""
    return (
        "<?xml version='1.0'?><rss version='2.0'><channel><title>t</title><item>"
        f"<title>Poisoned</title><link>{link}</link>{guid_tag}"
        "<description>Poisoned abstract</description></item></channel></rss>"
    ).encode()


def test_item9_a_feed_item_naming_an_arxiv_url_on_its_own_host_is_its_own_item() -> None:
    link = "https://evil.example/x?arxiv.org/abs/2502.60001v10000"
    (item,) = parse_feed(feed_of(link)).papers
    assert item.id == f"feed:{link}" and not item.is_arxiv and item.url == link
    assert item.version is None and item.authority == Authority.FEED


def test_item9_a_feed_item_on_arxiv_keeps_the_id_but_not_its_version_claim() -> None:
    (item,) = parse_feed(feed_of("https://arxiv.org/abs/2502.60001v10000")).papers
    assert (item.id, item.version, item.authority) == ("2502.60001", None, Authority.FEED)
    (tagged,) = parse_feed(feed_of("https://blog.example/p/1", "oai:arXiv.org:2502.60001v3")).papers
    assert (tagged.id, tagged.version) == ("2502.60001", None)


REAL_TEXT = ("Real title", "Real abstract", ("Ada Lovelace",))


def real(authority: Authority, version: int | None = None) -> Paper:
    title, abstract, authors = REAL_TEXT
    return Paper(
        id="2502.60001", title=title, abstract=abstract, authors=authors, version=version,
        authority=authority, on_huggingface=authority == Authority.HUGGINGFACE,
    )  # fmt: skip


POISON = Paper(
    id="2502.60001", title="Poisoned", abstract="Poisoned abstract", authors=("Mallory",),
    categories=("cs.CR",), authority=Authority.FEED, link="https://arxiv.org/abs/2502.60001",
)  # fmt: skip


@pytest.mark.parametrize(
    "source", [Authority.ARXIV_API, Authority.HUGGINGFACE, Authority.ARXIV_RSS]
)
def test_item9_a_feed_never_overwrites_arxiv_or_hf_text_in_either_order(
    source: Authority,
) -> None:
    version = None if source == Authority.HUGGINGFACE else 1
    for merged in (merge(real(source, version), POISON), merge(POISON, real(source, version))):
        assert (merged.title, merged.abstract, merged.authors) == REAL_TEXT
        assert (merged.version, merged.authority) == (version, source)
        assert merged.categories == ("cs.CR",)  # a lower source fills what is missing
        assert merged.url.endswith("/2502.60001")


def test_item9_text_follows_the_newest_arxiv_version_then_the_more_authoritative_source() -> None:
    hf, rss2, api2, rss3 = (
        real(Authority.HUGGINGFACE),
        Paper(id="2502.60001", title="RSS v2", abstract="", version=2,
              authority=Authority.ARXIV_RSS),
        Paper(id="2502.60001", title="API v2", abstract="", version=2,
              authority=Authority.ARXIV_API),
        Paper(id="2502.60001", title="RSS v3", abstract="", version=3,
              authority=Authority.ARXIV_RSS),
    )  # fmt: skip
    assert merge(hf, rss2).title == "RSS v2"  # arXiv's own newer text
    assert merge(merge(hf, api2), rss2).title == "API v2"  # same version: the API's
    assert merge(merge(api2, rss3), hf).title == "RSS v3"  # a later version
    assert merge(merge(rss3, POISON), POISON).title == "RSS v3"


def test_item11_a_paper_whose_id_is_no_arxiv_id_gets_no_link() -> None:
    stored = Paper(id="a/../../../../evil", title="x", abstract="", on_huggingface=True)
    assert not stored.is_arxiv and stored.url == "" and stored.pdf_url is None
    assert not is_arxiv_id("2502.60001v2") and is_arxiv_id("math.GT/0309136")
