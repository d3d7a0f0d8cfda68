"""`like:` files: BibTeX, a Zotero CSV export and a plain list; broken files give positioned errors."""

from __future__ import annotations

import pytest

from digestd.relevance.imports import arxiv_id_of, detect_format, parse_likes

BIB = """% exported from a reference manager
@string{neurips = "NeurIPS"}
@article{vaswani2017,
  title = {Attention Is {All} You Need},
  author = "Vaswani, Ashish and others",
  eprint = {1706.03762},
  archivePrefix = {arXiv},
  year = 2017
}
@inproceedings{journal_only, title={No arXiv here}, booktitle=neurips}
@misc{flash, title={FlashAttention}, url={https://arxiv.org/abs/2205.14135v2}}
@misc{doi, title = "FlashAttention-2", doi = {10.48550/arXiv.2307.08691}}
@article{dup, title={Again}, eprint={1706.03762v5}}
"""

ZOTERO = (
    '\ufeff"Key","Item Type","Publication Year","Author","Title","Url","DOI","Extra"\n'
    '"AB12","preprint","2024","Dao, Tri","FlashAttention-3",'
    '"http://arxiv.org/abs/2407.08608v2","10.48550/arXiv.2407.08608","arXiv:2407.08608 [cs]"\n'
    '"CD34","journalArticle","2020","Doe, J","A journal paper","https://doi.org/10.1/x","10.1/x",""\n'
    '"EF56","preprint","2023","Kwon, W","Paged, ""quoted"" attention","","",'
    '"arXiv: 2309.06180"\n'
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2401.00001", "2401.00001"),
        ("arXiv:2401.00001v2", "2401.00001"),
        ("https://arxiv.org/pdf/2401.00001v3.pdf", "2401.00001"),
        ("10.48550/arXiv.2401.00001", "2401.00001"),
        ("https://doi.org/10.48550/arXiv.2401.00001", "2401.00001"),
        ("hep-th/9901001", "hep-th/9901001"),
        ("2401.1", None),
        ("not an id", None),
    ],
)
def test_arxiv_ids_as_people_write_them(text: str, expected: str | None) -> None:
    assert arxiv_id_of(text) == expected


def test_bibtex_ids_from_eprint_url_and_doi() -> None:
    found = parse_likes(BIB, file="library.bib")
    assert found.problems == ()
    assert found.ids == ("1706.03762", "2205.14135", "2307.08691")
    assert found.skipped == 1  # the journal paper: not an error


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "\n@article{a,\n  title = {Unclosed,\n  eprint = {1706.03762}\n}\n",
            2,
            "entry not closed",
        ),
        ("@article{a, title = {x}}\n\n@misc{b,\n  title x\n}\n", 4, "expected 'name = value'"),
        ('@misc{c,\n  title = "never closed\n}\n', 2, "unterminated"),
        ("@article{d, title = {x}", 1, "entry not closed"),
    ],
)
def test_broken_bibtex_is_refused_at_its_line(text: str, line: int, message: str) -> None:
    found = parse_likes(text, file="broken.bib")
    assert found.ids == ()
    (problem,) = found.problems
    assert (problem.file, problem.line, problem.field) == ("broken.bib", line, "like")
    assert message in problem.message
    assert str(problem).startswith(f"broken.bib:{line}:")


def test_zotero_csv_export() -> None:
    found = parse_likes(ZOTERO, file="My Library.csv")
    assert found.problems == ()
    assert found.ids == ("2407.08608", "2309.06180")
    assert found.skipped == 1


def test_broken_zotero_csv_names_the_line() -> None:
    text = ZOTERO + '"GH78","preprint","2024"\n'
    (problem,) = parse_likes(text, file="z.csv").problems
    assert problem.line == 5 and "3 fields where the header has 8" in problem.message
    (problem,) = parse_likes("Name,Url\nx,y\n", file="z.csv").problems
    assert problem.line == 1 and "no 'Title' column" in problem.message


def test_plain_list_with_comments_and_blank_lines() -> None:
    text = "# my reading list\n2401.00001\n\narXiv:2401.00002v3  # the good one\n2401.00001\n"
    found = parse_likes(text, file="likes.txt")
    assert found.ids == ("2401.00001", "2401.00002") and found.problems == ()


def test_a_plain_list_with_a_bad_line_is_refused_whole() -> None:
    found = parse_likes("2401.00001\nattention is all you need\n2401.00002\n", file="likes.txt")
    assert found.ids == ()
    (problem,) = found.problems
    assert str(problem) == (
        "likes.txt:2:1: like: 'attention is all you need' is not an arXiv id (like 2401.00001)"
    )


def test_format_detection() -> None:
    assert detect_format("refs.BIB", "") == "bibtex"
    assert detect_format("refs.txt", "  @article{x,}") == "bibtex"
    assert detect_format("export.csv", "Key,Title") == "zotero"
    assert detect_format("likes", "2401.00001") == "plain"
