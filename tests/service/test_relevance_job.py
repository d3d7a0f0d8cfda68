"""The digest job refreshes the readers' relevance models first: off the loop, saved beside the
state file, nothing done before anyone rates, and a failure keeps the previous models."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pgstate import pg_schema
from test_pipeline import make_deps

from digestd import pipeline
from digestd.pipeline import relevance as relevance_module
from digestd.service.jobs import Jobs
from digestd.store import open_store

MON_0600 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


def jobs_for(deps: Any) -> Jobs:
    unused: Any = None  # refresh_relevance touches only the deps
    return Jobs(
        deps,
        unused,
        metrics=unused,
        alerts=unused,
        alert_mailer=unused,
        stopping=lambda: False,
        state_lost=lambda: None,
    )


async def test_models_are_refreshed_saved_and_kept_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deps = make_deps(tmp_path, now=MON_0600 - timedelta(days=1))
    await pipeline.ingest(deps, now=MON_0600)
    jobs = jobs_for(deps)
    saved = Path(f"{deps.store.path}.relevance.npz")
    await jobs.refresh_relevance()
    assert deps.relevance is None and not saved.exists()  # nobody rated: nothing to do

    deps.store.ratings.rate("bob@example.org", "2501.90011", 1, at=MON_0600)
    await jobs.refresh_relevance()
    assert deps.relevance is not None and set(deps.relevance.models) == {"bob@example.org"}
    assert saved.exists()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("digestd.pipeline.feedback.refresh", broken)
    kept = deps.relevance
    await jobs.refresh_relevance()
    assert deps.relevance is kept
    assert relevance_module.load(saved) is not None


async def test_on_a_database_state_the_models_are_kept_in_memory_not_written_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a path made from the URL would land here
    deps = make_deps(tmp_path, now=MON_0600 - timedelta(days=1))
    deps.store.close()
    with pg_schema("pgparity") as url, open_store(url) as store:
        deps.store = store
        pipeline.register(deps, now=MON_0600 - timedelta(days=1))
        await pipeline.ingest(deps, now=MON_0600)
        store.ratings.rate("bob@example.org", "2501.90011", 1, at=MON_0600)
        jobs = jobs_for(deps)
        await jobs.refresh_relevance()
        assert deps.relevance is not None and set(deps.relevance.models) == {"bob@example.org"}
        assert list(work.iterdir()) == []


async def test_like_lists_are_imported_once_before_the_models_are_refreshed(tmp_path: Path) -> None:
    subscribers = (
        'defaults:\n  schedule: "0 7 * * *"\nsubscribers:\n'
        "  - email: bob@example.org\n    like: ['2501.90011', {file: likes.txt}]\n"
    )
    (tmp_path / "likes.txt").write_text("# kv cache\n2503.90050\n")
    deps = make_deps(tmp_path, subscribers, now=MON_0600 - timedelta(days=1))
    deps.options = replace(deps.options, likes_base=tmp_path)
    await pipeline.ingest(deps, now=MON_0600)  # both liked papers are stored: nothing to fetch
    jobs = jobs_for(deps)
    await jobs.import_likes()
    await jobs.refresh_relevance()
    assert deps.store.ratings.likes("bob@example.org") == ["2501.90011", "2503.90050"]
    assert deps.relevance is not None and deps.relevance.models["bob@example.org"].kind == "nearest"
    first = deps.store.ratings.ratings("bob@example.org")
    await jobs.import_likes()  # again: nothing changes, nobody is retrained
    assert deps.store.ratings.ratings("bob@example.org") == first
