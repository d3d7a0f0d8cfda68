"""The README's demo with `state: postgresql://…`: `check` says the schema version it found,
`run --once` polls, composes and delivers through the database, `status` reads it back; the
state URL never shows its password."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgstate import pg_schema

from digestd.store.sqlite import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Path]:
    shutil.copytree(ROOT / "config" / "demo", tmp_path / "demo")
    path = tmp_path / "demo" / "digestd.yaml"
    with pg_schema() as url:
        text = path.read_text().replace("../../var/demo/mail", "mail")
        lines = [
            f'state: "{url}"' if line.startswith("state:") else line for line in text.splitlines()
        ]
        path.write_text("\n".join(lines) + "\n")
        yield path


def digestd(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digestd", "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_the_demo_runs_on_postgresql(demo: Path) -> None:
    check = digestd(demo, "check")
    assert check.returncode == 0, check.stderr
    assert "(reachable (PostgreSQL" in check.stdout and "schema version 0)" in check.stdout
    once = digestd(demo, "run", "--once")
    assert once.returncode == 0, once.stderr
    assert len(list((demo.parent / "mail" / "new").iterdir())) == 4
    again = digestd(demo, "run", "--once")  # the ledger is in the database: nothing twice
    assert again.returncode == 0 and len(list((demo.parent / "mail" / "new").iterdir())) == 4
    status = digestd(demo, "status")
    assert status.returncode == 0 and "4 sent" in status.stdout
    assert not (demo.parent / "digestd.sqlite3.lock").exists()
    check = digestd(demo, "check")
    assert f"schema version {SCHEMA_VERSION})" in check.stdout


def test_an_unreachable_database_is_one_line_without_the_password(demo: Path) -> None:
    text = demo.read_text().splitlines()
    text = [
        'state: "postgresql://digestd:pw-in-url@127.0.0.1:1/digestd"'
        if line.startswith("state:")
        else line
        for line in text
    ]
    demo.write_text("\n".join(text) + "\n")
    for command in (("check",), ("run", "--once"), ("status",)):
        done = digestd(demo, *command, env={"DIGESTD_STATE_PASSWORD": "pw-from-env"})
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        output = done.stdout + done.stderr
        assert "pw-in-url" not in output and "pw-from-env" not in output
        assert "Traceback" not in output
        assert "digestd: the state database postgresql://***@127.0.0.1:1/digestd" in done.stderr
