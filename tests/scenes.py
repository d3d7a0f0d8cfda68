"""A scene several test folders run `digestd` in: the first seed papers as a file source, a
subscribers file, and settings delivering over plain SMTP to a local test relay."""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def file_smtp_scene(
    tmp_path: Path,
    port: int,
    subscribers: str,
    *,
    source: str = "",
    delivery: str = "  timeout: 5s\n",
    sender: str = "Paper Digest <digest@example.org>",
) -> Path:
    """Write papers.json (3 seed papers), subscribers.yaml and digestd.yaml; return the last.

    `source`: more keys of the file source, e.g. ", poll_every: 1h"; `delivery`: more lines of the
    delivery section (each indented two spaces, ending in a newline).
    """
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())[:3]
    (tmp_path / "papers.json").write_text(json.dumps(items))
    (tmp_path / "subscribers.yaml").write_text(subscribers, encoding="utf-8")
    config = tmp_path / "digestd.yaml"
    config.write_text(
        f"""\
source: {{kind: file, url: papers.json{source}}}
state: state.sqlite3
delivery:
  kind: smtp
  host: 127.0.0.1
  port: {port}
  security: none
{delivery}  from: "{sender}"
subscribers: subscribers.yaml
lookback: 3650d
""",
        encoding="utf-8",
    )
    return config
