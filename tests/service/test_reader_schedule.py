"""A web reader whose schedule or timezone no YAML subscriber uses gets a digest job as soon as
their confirmation reaches the daemon's audience (issue 15), and loses it with their removal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from test_pipeline import make_deps

from digestd.pipeline import readers
from digestd.rules.readers import reader_spec
from digestd.service.jobs import Jobs
from digestd.service.schedule import Schedule
from digestd.service.worklock import WorkLock

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
YAML = 'defaults:\n  schedule: "0 7 * * *"\nsubscribers:\n  - email: alice@example.org\n'


class _Jobs:
    async def digests(self) -> None: ...
    async def deliver(self) -> None: ...


def test_a_readers_new_group_gets_its_digest_job(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, YAML, now=NOW)
    lock = cast(WorkLock, object())  # the jobs are only registered here, never run
    schedule = Schedule(
        deps, lock, cast(Jobs, _Jobs()), poll_every=timedelta(minutes=30), intervals={}
    )
    schedule.digests()
    deps.audience_changed = schedule.digests  # as the daemon wires it

    def jobs() -> set[str]:
        return {j.id for j in schedule.scheduler.get_jobs() if j.id.startswith("digest ")}

    assert jobs() == {"digest UTC 0 7 * * *"}
    spec = reader_spec(keywords=["kv cache"], schedule="30 6 * * mon", timezone="Asia/Tokyo")
    deps.store.readers.add_pending("carol@example.org", name="Carol", spec=spec, at=NOW)
    deps.store.readers.confirm("carol@example.org", at=NOW)  # e.g. by the web page's worker
    readers.sync_readers(deps, now=NOW)
    assert jobs() == {"digest UTC 0 7 * * *", "digest Asia/Tokyo 30 6 * * mon"}
    assert readers.remove_reader(deps, "carol@example.org", now=NOW)
    assert jobs() == {"digest UTC 0 7 * * *"}
