"""A reader's ratings are their data (issue #16): `subscribers export` carries their likes as
`like:` (dislikes as a comment), `subscribers remove` forgets them, `status` counts them."""

from __future__ import annotations

from pathlib import Path

import yaml
from test_cli_subscribers import T0, setup
from test_e2e import digestd

from digestd.store.sqlite import Store


def rate(tmp_path: Path) -> None:
    with Store(tmp_path / "state.sqlite3") as store:
        store.ratings.rate("carol@example.org", "2401.00001", 1, at=T0)
        store.ratings.rate("carol@example.org", "2401.00002", 1, at=T0, origin="import")
        store.ratings.rate("carol@example.org", "2401.00003", -1, at=T0)
        store.ratings.rate("erin@example.org", "feed:abc", 1, at=T0)  # no arXiv id: no like:


def test_export_carries_likes_and_names_dislikes(tmp_path: Path) -> None:
    config = setup(tmp_path)
    rate(tmp_path)
    done = digestd(config, "subscribers", "export")
    assert done.returncode == 0, done.stderr
    exported = {e["email"]: e for e in yaml.safe_load(done.stdout)["subscribers"]}
    assert exported["carol@example.org"]["like"] == ["2401.00001", "2401.00002"]
    assert "like" not in exported["erin@example.org"]
    assert "# carol@example.org disliked: 2401.00003" in done.stdout


def test_status_counts_and_remove_forgets_ratings(tmp_path: Path) -> None:
    config = setup(tmp_path)
    rate(tmp_path)
    assert "ratings:     3 likes, 1 dislikes" in digestd(config, "status").stdout
    assert digestd(config, "subscribers", "remove", "carol@example.org").returncode == 0
    with Store(tmp_path / "state.sqlite3") as store:
        assert store.ratings.ratings("carol@example.org") == []
        assert len(store.ratings.ratings("erin@example.org")) == 1
    assert "ratings:     1 likes, 0 dislikes" in digestd(config, "status").stdout
