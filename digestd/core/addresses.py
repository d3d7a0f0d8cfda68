"""Email addresses: the one check (`check_address`), the one key (`address_key`), mailboxes.

Every layer that meets an address uses these: the settings and subscribers loaders (so `digestd
check` refuses exactly what the builder would), the message builder, the SMTP transport, the store
and the pipeline (which key a subscriber by `address_key`). Pure: no I/O, no clock.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import NoReturn

import idna

__all__ = ["address_key", "address_warning", "check_address", "parse_mailbox"]

# RFC 5322 dot-atom (no quoted local parts) and RFC 1123 host labels.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def address_key(email: str) -> str:
    """The key an address is stored and compared under: stripped, lower-cased.

    `lower()`, not `casefold()`: the store's rows and every unsubscribe link already issued (its
    MAC covers this key) were made with it, and the two differ for a few non-ASCII letters (ß).
    """
    return email.strip().lower()


def parse_mailbox(mailbox: str) -> tuple[str | None, str]:
    """'Name <addr>' → (name, addr); 'addr' → (None, addr). The address is checked.

    :raises ValueError: when the address is not a plain ASCII addr-spec.
    """
    raw = mailbox.strip()
    if raw.endswith(">") and "<" in raw:
        name, _, rest = raw[:-1].rpartition("<")
        name = name.strip()
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = re.sub(r"\\(.)", r"\1", name[1:-1])
        return (name or None), check_address(rest)
    return None, check_address(raw)


def check_address(address: str) -> str:
    """`address` stripped, as every message and envelope carries it: the one check of addresses.

    The settings and subscribers loaders call it too, so `digestd check` refuses exactly what the
    builder would. The local part is an ASCII dot-atom (a non-ASCII one needs SMTPUTF8, which
    digestd does not speak); an internationalised domain is converted to its A-labels (IDNA 2008,
    `bücher.de` → `xn--bcher-kva.de`), so every relay can route it. A single-label domain
    (`alice@localhost`) is accepted; `address_warning` says why it may not be routed.

    :raises ValueError: saying what is wrong, in words.
    """
    addr = address.strip()
    try:
        return _checked_address(addr)
    except ValueError as exc:
        shown = addr if len(addr) <= 80 else addr[:40] + "…"
        raise ValueError(f"{shown!r} is not a valid email address ({exc})") from None


@functools.lru_cache(maxsize=1024)  # the sender's address is checked for every message
def _checked_address(addr: str) -> str:
    if len(addr) > 254:
        _refuse("longer than 254 characters")
    hidden = _hidden(addr)
    if hidden is not None:  # U+200B and friends: invisible in the file, fatal in a header
        _refuse(f"it contains U+{ord(hidden):04X}, an invisible or control character")
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or "@" in local or " " in addr:
        _refuse("expected one local@domain")
    if not local.isascii():
        _refuse(
            f"the local part {local!r} is not ASCII; that needs SMTPUTF8, which digestd does not"
            " support"
        )
    if len(local) > 64:
        _refuse("the local part is longer than 64 characters")
    if not _LOCAL_PART.fullmatch(local):
        _refuse(f"the local part {local!r} is not a plain dot-atom")
    result = f"{local}@{_a_labels(domain)}"
    if len(result) > 254:
        _refuse("longer than 254 characters")
    return result


def _hidden(addr: str) -> str | None:
    """The first invisible or control character (Unicode categories C and Z, bar the space)."""
    if addr.isascii():  # the common case, 6 per message: in ASCII those are exactly the controls
        found = _ASCII_CONTROL.search(addr)
        return found.group() if found else None
    return next((c for c in addr if unicodedata.category(c)[0] in "CZ" and c != " "), None)


_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _refuse(reason: str) -> NoReturn:
    raise ValueError(reason)


@functools.lru_cache(maxsize=4096)  # a subscriber file has 100,000 addresses but few domains
def _a_labels(domain: str) -> str:
    """The domain as ASCII host labels; non-ASCII labels as IDNA 2008 A-labels."""
    labels = domain.split(".")
    out: list[str] = []
    for label in labels:
        if not label.isascii():
            try:
                label = idna.alabel(label.lower()).decode("ascii")
            except idna.IDNAError as exc:
                _refuse(f"the domain label {label!r} is not a valid internationalised name: {exc}")
        if not _HOST_LABEL.fullmatch(label):
            _refuse(f"the domain label {label!r} is not a host name (letters, digits, hyphens)")
        out.append(label)
    if out[-1].isdigit():
        _refuse(f"the domain {domain!r} ends in a number, not a name")
    if len(domain) > 253:
        _refuse("the domain is longer than 253 characters")
    return ".".join(out)


def address_warning(address: str) -> str | None:
    """Why a valid address may still not be deliverable, or None: single-label domains (an
    internal host, `localhost`) reach only a relay that knows them."""
    addr = check_address(address)
    if "." not in addr.rpartition("@")[2]:
        return f"{addr!r} has a single-label domain: only a relay on your network can deliver it"
    return None
