"""The Daily Papers parser on real fixtures, hostile items, broken replies, and fuzzed input."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digestd.core.errors import SourceError
from digestd.core.model import ParseResult
from digestd.sources.hf_json import merge_results, parse_hf_daily, parse_page

FIXTURES = Path(__file__).parents[1] / "fixtures"
REAL = FIXTURES / "hf_daily_papers_real_sample.json"
SEED = FIXTURES / "hf_daily_papers_seed.json"


def load(path: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(path.read_bytes())
    return data


def encode(items: Any) -> bytes:
    return json.dumps(items).encode()


def item(**paper: Any) -> dict[str, Any]:
    """The first real item with `paper` fields overridden (None deletes the field)."""
    base = copy.deepcopy(load(REAL)[0])
    for key, value in paper.items():
        if value is None:
            base["paper"].pop(key, None)
        else:
            base["paper"][key] = value
    return base


# Real fixtures ------------------------------------------------------------------------------


def test_real_sample_parses_every_item() -> None:
    result = parse_hf_daily(REAL.read_bytes())
    assert result.problems == ()
    assert [p.id for p in result.papers] == ["2608.09888", "2608.15089", "2608.14391", "2412.20138"]


def test_seed_parses_all_54_items() -> None:
    result, count = parse_page(SEED.read_bytes())
    assert count == 54
    assert len(result.papers) == 54
    assert result.problems == ()


def test_upvotes_come_from_paper_not_top_level() -> None:
    raw = load(REAL)
    raw[0]["upvotes"] = 99999  # a top-level field must not be read
    paper = parse_hf_daily(encode(raw)).papers[0]
    assert paper.upvotes == 781


def test_first_real_item_fields() -> None:
    paper = parse_hf_daily(REAL.read_bytes()).papers[0]
    assert paper.title == "BDH-CQ: In-Context Learning with Recurrent Latent Reasoning"
    assert paper.authors[:2] == ("Björn Engdahl", "Adrian Kosowski")
    assert paper.comments == 6
    assert paper.published_at == datetime(2026, 8, 10, tzinfo=UTC)
    assert paper.listed_on == date(2026, 8, 11)
    assert paper.organization == "Pathway"
    assert paper.ai_summary is not None and paper.ai_summary.startswith("A 150M-parameter")
    assert paper.github_repo == "https://github.com/pathwaycom/arc-task-gen"
    assert paper.project_page is not None and paper.project_page.startswith("https://pathway.com/")


def test_real_item_without_listing_day_or_project_page() -> None:
    paper = parse_hf_daily(REAL.read_bytes()).papers[3]
    assert paper.id == "2412.20138"
    assert paper.listed_on is None
    assert paper.project_page is None
    assert paper.published_at == datetime(2024, 12, 28, 12, 54, 6, tzinfo=UTC)


def test_line_breaks_are_collapsed() -> None:
    for paper in (
        parse_hf_daily(SEED.read_bytes()).papers + parse_hf_daily(REAL.read_bytes()).papers
    ):
        for text in (paper.title, paper.abstract):
            assert "\n" not in text and "  " not in text and text == text.strip()
    raw = encode([item(title="A Solver\n  in Around\t10 Steps ", summary="one\ntwo\r\n  three")])
    paper = parse_hf_daily(raw).papers[0]
    assert paper.title == "A Solver in Around 10 Steps"
    assert paper.abstract == "one two three"


# Normalisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_id", "expected"),
    [
        ("2401.00001v2", "2401.00001"),
        ("2401.00001v12", "2401.00001"),
        ("2401.00001", "2401.00001"),
        (" 2401.00001v1 ", "2401.00001"),
        ("hep-th/9901001v3", "hep-th/9901001"),
    ],
)
def test_arxiv_version_is_stripped(raw_id: str, expected: str) -> None:
    assert parse_hf_daily(encode([item(id=raw_id)])).papers[0].id == expected


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "ftp://example.org/x",
        "//example.org/x",
        "https://",
        'https://example.org/"onmouseover="x',
        "https://exa mple.org/",
        "http://[::1",
        "",
    ],
)
def test_hostile_links_are_dropped(url: str) -> None:
    paper = parse_hf_daily(encode([item(projectPage=url, githubRepo=url)])).papers[0]
    assert paper.project_page is None
    assert paper.github_repo is None


def test_http_links_are_kept() -> None:
    raw = encode(
        [item(projectPage="http://example.org/p?q=1", githubRepo="HTTPS://github.com/a/b")]
    )
    paper = parse_hf_daily(raw).papers[0]
    assert paper.project_page == "http://example.org/p?q=1"
    assert paper.github_repo == "HTTPS://github.com/a/b"


def test_hidden_authors_are_left_out() -> None:
    authors = [
        {"name": "Ada Lovelace", "hidden": False},
        {"name": "Secret Person", "hidden": True},
        {"name": "  Alan \n Turing "},
        {"hidden": False},
        "not an author",
    ]
    paper = parse_hf_daily(encode([item(authors=authors)])).papers[0]
    assert paper.authors == ("Ada Lovelace", "Alan Turing")


def test_organization_prefers_fullname_then_name_then_top_level() -> None:
    with_full = item(organization={"name": "msft", "fullname": "Microsoft"})
    name_only = item(id="2401.00002", organization={"name": "pathwaycom"})
    top_level = item(id="2401.00003", organization=None)
    top_level["organization"] = {"name": "hf", "fullname": "Hugging Face"}
    none = item(id="2401.00004", organization=None)
    none.pop("organization", None)
    papers = parse_hf_daily(encode([with_full, name_only, top_level, none])).papers
    assert [p.organization for p in papers] == ["Microsoft", "pathwaycom", "Hugging Face", None]


def test_minimal_item_with_only_id_and_title() -> None:
    result = parse_hf_daily(encode([{"paper": {"id": "2401.00001", "title": "T"}}]))
    assert result.problems == ()
    paper = result.papers[0]
    assert (paper.id, paper.title, paper.abstract, paper.authors) == ("2401.00001", "T", "", ())
    assert (paper.upvotes, paper.comments, paper.published_at, paper.listed_on) == (
        0,
        0,
        None,
        None,
    )
    assert (paper.organization, paper.ai_summary, paper.github_repo) == (None, None, None)


def test_title_falls_back_to_top_level() -> None:
    raw = encode([{"paper": {"id": "2401.00001"}, "title": "Top title", "summary": "Top\nsum"}])
    paper = parse_hf_daily(raw).papers[0]
    assert (paper.title, paper.abstract) == ("Top title", "Top sum")


def test_optional_fields_of_the_wrong_type_are_dropped_not_fatal() -> None:
    bad = item(
        upvotes="lots",
        publishedAt="yesterday",
        submittedOnDailyAt=12.5e300,
        organization="Pathway",
        ai_summary=["x"],
        githubRepo=42,
        authors={"name": "x"},
    )
    bad["numComments"] = None
    bad["organization"] = ["not", "an", "object"]
    result = parse_hf_daily(encode([bad]))
    assert result.problems == ()
    paper = result.papers[0]
    assert paper.upvotes == 0 and paper.comments == 0
    assert paper.published_at is None and paper.listed_on is None
    assert paper.organization is None and paper.ai_summary is None and paper.github_repo is None
    assert paper.authors == ()


def test_counts_are_clamped() -> None:
    paper = parse_hf_daily(encode([item(upvotes=10**30)])).papers[0]
    assert paper.upvotes == 2**31 - 1
    assert parse_hf_daily(encode([item(upvotes=-5)])).papers[0].upvotes == 0


def test_naive_and_offset_timestamps_become_utc() -> None:
    raw = encode(
        [item(publishedAt="2026-08-10T12:00:00", submittedOnDailyAt="2026-08-11T23:30:00-02:00")]
    )
    paper = parse_hf_daily(raw).papers[0]
    assert paper.published_at == datetime(2026, 8, 10, 12, tzinfo=UTC)
    assert paper.listed_on == date(2026, 8, 12)


# Malformed items ---------------------------------------------------------------------------


def test_malformed_items_become_problems_and_the_rest_goes_on() -> None:
    good = load(REAL)
    items: list[Any] = [
        good[0],
        {"paper": {"title": "no id"}},
        {"paper": {"id": "2401.00009"}},  # no title anywhere
        {"paper": {"id": "2401.00010", "title": "   \n "}},
        {"no paper": True},
        "a string",
        None,
        {"paper": {"id": "<script>", "title": "x"}},
        {"paper": {"id": 2401.00011, "title": "numeric id"}},
        good[1],
    ]
    result = parse_hf_daily(encode(items))
    assert [p.id for p in result.papers] == ["2608.09888", "2608.15089"]
    assert [p.index for p in result.problems] == [1, 2, 3, 4, 5, 6, 7, 8]
    for problem in result.problems:
        assert problem.reason and "\n" not in problem.reason and len(problem.reason) <= 200


def test_duplicates_keep_the_highest_upvotes_at_the_first_position() -> None:
    items = [
        item(id="2401.00001v1", upvotes=3),
        item(id="2401.00002"),
        item(id="2401.00001v2", upvotes=9),
    ]
    items.append(item(id="2401.00001", upvotes=5))
    result, count = parse_page(encode(items))
    assert count == 4
    assert [(p.id, p.upvotes) for p in result.papers] == [("2401.00001", 9), ("2401.00002", 781)]


def test_merge_results_dedupes_across_replies() -> None:
    first = parse_hf_daily(encode([item(id="2401.00001", upvotes=1)]))
    second = parse_hf_daily(encode([item(id="2401.00001", upvotes=7), item(id="2401.00002")]))
    merged = merge_results([first, second])
    assert [(p.id, p.upvotes) for p in merged.papers] == [("2401.00001", 7), ("2401.00002", 781)]


# Broken replies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "not JSON"),
        (b"", "not JSON"),
        (REAL.read_bytes()[:500], "not JSON"),  # truncated
        (b"\xff\xfe\x00garbage", "not JSON"),
        (
            b'{"error":"\xe2\x9c\x96 Too big: expected number to be <=100\\n  \\u2192 at limit"}',
            "<=100",
        ),
        (b'{"papers": []}', "expected an array"),
        (b'"just a string"', "expected an array"),
        (b"42", "expected an array"),
        (b"null", "expected an array"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_a_reply_that_is_not_a_list_fails_as_a_whole(raw: bytes, needle: str) -> None:
    with pytest.raises(SourceError) as info:
        parse_hf_daily(raw)
    assert info.value.transient is False
    message = str(info.value)
    assert needle in message
    assert "\n" not in message and len(message) < 400


def test_error_message_shows_the_first_bytes() -> None:
    with pytest.raises(SourceError, match="502 Bad Gateway"):
        parse_hf_daily(b"<html>502 Bad Gateway</html>" + b"x" * 10_000)


def test_empty_list_is_fine() -> None:
    assert parse_hf_daily(b"[]") == ParseResult(papers=())
    assert parse_page(b"  [ ]\n") == (ParseResult(papers=()), 0)


# Fuzzing ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
paper_like = st.fixed_dictionaries(
    {
        "paper": st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "title",
                    "summary",
                    "authors",
                    "upvotes",
                    "publishedAt",
                    "submittedOnDailyAt",
                    "organization",
                    "ai_summary",
                    "githubRepo",
                    "projectPage",
                ]
            ),
            json_values,
        )
    },
    optional={"numComments": json_values, "organization": json_values, "title": json_values},
)


def check(raw: bytes) -> None:
    try:
        result = parse_hf_daily(raw)
    except SourceError as exc:
        assert exc.transient is False
        return
    assert isinstance(result, ParseResult)
    for paper in result.papers:
        assert paper.id and paper.title
        assert paper.github_repo is None or paper.github_repo.lower().startswith("http")


# Derandomised and without an example database: the same cases on every run, nothing left on disk.
FUZZ = settings(
    derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@settings(FUZZ, max_examples=200)
@given(st.binary(max_size=512))
def test_fuzz_any_bytes(raw: bytes) -> None:
    check(raw)


@settings(FUZZ, max_examples=200)
@given(json_values)
def test_fuzz_any_json(value: Any) -> None:
    check(json.dumps(value).encode())


@settings(FUZZ, max_examples=100)
@given(st.lists(paper_like, max_size=5))
def test_fuzz_item_shaped_json(items: list[Any]) -> None:
    check(json.dumps(items).encode())


@pytest.mark.parametrize(
    "raw_id",
    [
        "a/../../../../evil",
        "2502.60001/../../x",
        "../2502.60001",
        "2502.60001?next=https://evil.example",
        "2502.60001#x",
        "evil",
        "12345",
        "HEP-TH/9901001",
        "2502.60001v",
    ],
)
def test_item11_an_id_of_another_shape_is_a_skipped_item_not_a_link(raw_id: str) -> None:
    result = parse_hf_daily(encode([item(id=raw_id), item(id="2502.60002")]))
    assert [p.id for p in result.papers] == ["2502.60002"]
    (problem,) = result.problems
    assert problem.index == 0 and "not an arXiv id" in problem.reason
