"""The self-registered readers as subscribers: stored specs → `Subscriber`s → their own `Matcher`.

Kept apart from the YAML's matcher so one reader's change rebuilds only this small one (the
daemon builds it off the event loop). An address the admin's file lists is the admin's: the
reader's row is left out while the YAML has it (YAML wins).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from digestd.core.addresses import address_key
from digestd.core.model import Subscriber, SubscriberSet
from digestd.rules.matcher import Matcher
from digestd.rules.readers import ReaderDefaults, validate_reader_spec
from digestd.store.protocols import Reader

__all__ = ["WEB_FILE", "build_web", "web_subscribers"]

log = logging.getLogger("digestd.pipeline")
WEB_FILE = "<web readers>"


def web_subscribers(
    readers: Iterable[Reader], yaml: SubscriberSet, defaults: ReaderDefaults
) -> tuple[Subscriber, ...]:
    """The confirmed readers the YAML does not list, as subscribers. A stored spec that no longer
    validates (the admin removed a rule set it used) loses that topic; any other problem leaves
    the reader out, logged without the address."""
    taken = {address_key(s.email) for s in yaml.subscribers}
    sets = dict(yaml.named_sets)
    found = []
    for reader in readers:
        if reader.confirmed_at is None or reader.email in taken:
            continue
        spec = dict(reader.spec)
        use = spec.get("use")
        if isinstance(use, list):
            spec["use"] = [t for t in use if t in sets]  # a topic the admin dropped
        sub = validate_reader_spec(
            spec, email=reader.email, name=reader.name, sets=sets, defaults=defaults
        )
        if isinstance(sub, Subscriber):
            found.append(sub)
        else:
            log.warning("reader left out: rules no longer valid (%s)", sub[0].message)
    return tuple(found)


def build_web(
    readers: Iterable[Reader], yaml: SubscriberSet, defaults: ReaderDefaults
) -> Matcher | None:
    """The readers' matcher (None: no reader to serve). CPU only: safe in a worker thread."""
    subs = web_subscribers(readers, yaml, defaults)
    if not subs:
        return None
    return Matcher.build(SubscriberSet(subscribers=subs, file=WEB_FILE))
