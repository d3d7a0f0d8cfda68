"""`relevance.backend`: TF-IDF by default; `embeddings` chosen without its extra installed is said
plainly by `check` (and the daemon trains with TF-IDF meanwhile); a wrong name is a config error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_e2e import digestd, write_config

from digestd.cli import check
from digestd.config.settings import load_settings
from digestd.pipeline import feedback
from digestd.relevance.dense import available

EMBEDDINGS = "relevance:\n  backend: embeddings\n"
INSTALL = "pip install 'digestd[embeddings]'"


def test_default_backend_is_tfidf_and_says_nothing(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, source_url="http://127.0.0.1:9", smtp_port=25))
    assert settings.relevance.backend == "tfidf"
    assert check.relevance_warnings(settings) == []


def test_embeddings_without_the_extra_tells_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path, source_url="http://127.0.0.1:9", smtp_port=25, extra=EMBEDDINGS)
    settings = load_settings(config)
    assert settings.relevance.backend == "embeddings"
    monkeypatch.setattr(check, "available", lambda: False)
    monkeypatch.setattr(feedback, "available", lambda: False)
    [warning] = check.relevance_warnings(settings)
    assert INSTALL in warning and "TF-IDF is used until then" in warning
    with caplog.at_level(logging.WARNING):
        assert feedback._backend("embeddings") == "tfidf"
    assert INSTALL in caplog.text


def test_check_runs_with_the_embeddings_backend_chosen(tmp_path: Path) -> None:
    config = write_config(tmp_path, source_url="http://127.0.0.1:9", smtp_port=25, extra=EMBEDDINGS)
    ok = digestd(config, "check")
    assert ok.returncode == 0, ok.stderr
    assert (INSTALL in ok.stdout) is not available()


def test_an_unknown_backend_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    extra = "relevance:\n  backend: bert\n"
    config = write_config(tmp_path, source_url="http://127.0.0.1:9", smtp_port=25, extra=extra)
    bad = digestd(config, "check")
    assert bad.returncode == 2 and "digestd.yaml:16:" in bad.stderr
    assert "Traceback" not in bad.stderr
