"""Preview: what one subscriber would get now, rendered, with nothing queued or marked."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from digestd.core.latex import readable_paper
from digestd.core.model import Digest, Rendered
from digestd.mail.assemble import digest_for, render_context
from digestd.mail.render import render_digest
from digestd.pipeline.deps import Deps, key
from digestd.pipeline.enqueue import links_for

__all__ = ["preview"]


def preview(deps: Deps, email: str, *, now: datetime) -> tuple[Digest, Rendered] | None:
    """What `email` would get now, rendered, without queueing or marking anything."""
    sub = deps.subscribers.by_email(email)
    if sub is None:
        return None
    papers = deps.store.papers.candidates(key(sub), since=now - deps.options.lookback)
    readable = [readable_paper(p) for p in papers]
    scores = deps.relevance.relevance_for(sub.email, readable) if deps.relevance else None
    found = deps.audience.match(readable, sub, relevance=scores)
    digest = digest_for(sub, "digest", found)
    links = replace(links_for(deps, sub, "<preview@localhost>"), view_url=None)  # no copy stored
    ctx = render_context(deps.options, now=now, links=links, sub=sub)
    return digest, render_digest(digest, deps.envs, ctx)
