"""`digestd check` reads every `like:` file as the daemon will: a broken one fails with its line."""

from __future__ import annotations

from pathlib import Path

from test_e2e import digestd, write_config

SUBSCRIBERS = """\
subscribers:
  - email: alice@example.org
    like: ["2205.14135", {file: alice.bib}]
    rules:
      - similar: {min_score: 0.35}
      - query: "similar>=0.5 AND NOT survey"
"""


def test_check_accepts_likes_and_similar_and_refuses_a_broken_like_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, source_url="http://127.0.0.1:9", smtp_port=2525)
    (tmp_path / "subscribers.yaml").write_text(SUBSCRIBERS)
    (tmp_path / "alice.bib").write_text("@misc{a, title={FlashAttention-2}, eprint={2307.08691}}\n")
    ok = digestd(config, "check")
    assert ok.returncode == 0, ok.stderr
    assert "with likes: 1" in ok.stdout

    (tmp_path / "alice.bib").write_text("@misc{a,\n  title={x},\n  eprint 2307.08691\n}\n")
    broken = digestd(config, "check")
    assert broken.returncode == 2
    assert "alice.bib:3:3: like: expected 'name = value' in the entry" in broken.stderr
    assert "Traceback" not in broken.stderr

    (tmp_path / "subscribers.yaml").write_text(
        SUBSCRIBERS.replace("{min_score: 0.35}", "{min_score: 3}")
    )
    bad = digestd(config, "check")
    assert bad.returncode == 2 and "subscribers.yaml:5:" in bad.stderr
    assert "less than or equal to 1" in bad.stderr
