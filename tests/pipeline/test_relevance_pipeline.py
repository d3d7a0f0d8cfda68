"""Relevance in the pipeline: models refreshed from the store's ratings, a reader with likes and no
rules gets their best-scored papers first, `similar: true` picks papers, the state survives a save,
and a reader who dislikes everything is served as before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_pipeline import make_deps

from digestd import pipeline
from digestd.pipeline.relevance import load, refresh, save
from digestd.relevance.dense import Embeddings, available

MON_0600 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
KV = ("2501.90011", "2503.90050")  # Task-KV, WindowKV
SUBSCRIBERS = """\
defaults:
  schedule: "0 7 * * *"
  max_papers: 5
subscribers:
  - email: bob@example.org
  - email: carol@example.org
    rules:
      - similar: true
  - email: dan@example.org
"""


async def test_likes_rank_a_reader_without_rules_and_similar_picks_papers(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, SUBSCRIBERS, now=MON_0600 - timedelta(days=1))
    await pipeline.ingest(deps, now=MON_0600)
    before = pipeline.preview(deps, "bob@example.org", now=MON_0600)
    assert before is not None
    for reader in ("bob@example.org", "carol@example.org"):
        for pid in KV:
            deps.store.ratings.rate(reader, pid, 1, at=MON_0600)
    for paper in deps.store.papers.corpus(100):
        deps.store.ratings.rate("dan@example.org", paper.id, -1, at=MON_0600)
    deps.relevance = refresh(deps.store, None, now=MON_0600)
    assert set(deps.relevance.models) == {"bob@example.org", "carol@example.org"}

    found = pipeline.preview(deps, "bob@example.org", now=MON_0600)
    assert found is not None
    shown = [m.paper.id for m in found[0].matches]
    assert set(shown[:2]) == set(KV)  # the liked papers themselves score 1.0
    assert "kv cache" in found[0].matches[2].paper.abstract.lower()
    assert shown != [m.paper.id for m in before[0].matches]

    carol = pipeline.preview(deps, "carol@example.org", now=MON_0600)
    assert carol is not None
    assert all(m.relevance is not None and m.relevance >= 0.3 for m in carol[0].matches)
    assert {r.field for m in carol[0].matches for r in m.reasons} == {"similar"}
    assert "similar to papers you liked" in carol[1].text

    dan = pipeline.preview(deps, "dan@example.org", now=MON_0600)  # dislikes everything: no model
    assert dan is not None and [m.paper.id for m in dan[0].matches] == [
        m.paper.id for m in before[0].matches
    ]

    path = tmp_path / "relevance.npz"
    save(path, deps.relevance)
    again = load(path)
    assert again is not None and again.fitted_on == deps.relevance.fitted_on
    deps.relevance = again
    reloaded = pipeline.preview(deps, "bob@example.org", now=MON_0600)
    assert reloaded is not None and [m.paper.id for m in reloaded[0].matches] == shown


async def test_refresh_retrains_only_changed_readers_and_forgets_a_reader_without_likes(
    tmp_path: Path,
) -> None:
    deps = make_deps(tmp_path, SUBSCRIBERS, now=MON_0600 - timedelta(days=1))
    await pipeline.ingest(deps, now=MON_0600)
    earlier = MON_0600 - timedelta(hours=1)
    deps.store.ratings.rate("bob@example.org", KV[0], 1, at=earlier)
    deps.store.ratings.rate("carol@example.org", KV[1], 1, at=earlier)
    first = refresh(deps.store, None, now=MON_0600)
    later = MON_0600 + timedelta(hours=1)
    deps.store.ratings.rate("bob@example.org", KV[0], -1, at=later)  # changed their mind
    second = refresh(deps.store, first, now=later)
    assert set(second.models) == {"carol@example.org"}
    assert second.models["carol@example.org"] is first.models["carol@example.org"]
    assert second.features is first.features  # the corpus did not grow: no refit
    assert load(tmp_path / "missing.npz") is None
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    assert load(tmp_path / "bad.npz") is None


@pytest.mark.skipif(not available(), reason="optional: needs digestd[embeddings] (torch)")
async def test_the_embeddings_backend_ranks_saves_and_switches_back(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, SUBSCRIBERS, now=MON_0600 - timedelta(days=1))
    await pipeline.ingest(deps, now=MON_0600)
    for pid in KV:
        deps.store.ratings.rate("bob@example.org", pid, 1, at=MON_0600)
    state = refresh(deps.store, None, now=MON_0600, backend="embeddings")
    assert isinstance(state.features, Embeddings) and set(state.models) == {"bob@example.org"}
    deps.relevance = state
    found = pipeline.preview(deps, "bob@example.org", now=MON_0600)
    assert found is not None and {m.paper.id for m in found[0].matches[:2]} == set(KV)

    save(tmp_path / "models.npz", state)
    loaded = load(tmp_path / "models.npz")
    assert loaded is not None and isinstance(loaded.features, Embeddings)
    assert set(loaded.models) == {"bob@example.org"}
    back = refresh(deps.store, loaded, now=MON_0600, backend="tfidf")  # retrained in TF-IDF
    assert not isinstance(back.features, Embeddings) and set(back.models) == {"bob@example.org"}
