"""DKIM signing and the deliverability notes `digestd check` prints: the edge that reads the key.

Messages are signed once, when they are queued, so a retry sends byte-identical mail with the same
signature. The signature covers the headers receivers judge (From twice, so no second From can be
added unnoticed) and both List-Unsubscribe headers, as RFC 8058 §4 requires for one-click.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from digestd.config.sections import DkimSettings
from digestd.config.settings import Settings
from digestd.core.errors import ConfigError, ConfigProblem

__all__ = [
    "SIGNED_HEADERS",
    "check_notes",
    "dkim_dns_record",
    "dkim_txt_record",
    "generate_dkim_key",
    "load_signer",
    "write_private_key",
]

SIGNED_HEADERS = (
    "From", "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
    "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post",
)  # fmt: skip
MIN_BITS = 1024  # Gmail refuses shorter keys; 2048 is advised


def load_signer(config: DkimSettings) -> Callable[[bytes], bytes]:
    """A function that prepends a DKIM-Signature to a whole message.

    :raises ConfigError: the key file is unreadable, not an RSA PEM key, or shorter than 1024 bits.
    """
    key = _read_key(config.key_file)
    selector, domain = config.selector.encode(), config.domain.encode()

    def sign(message: bytes) -> bytes:
        present = _header_names(message)
        wanted = [h for h in SIGNED_HEADERS if h.lower() in present]
        signature = dkim.sign(
            message,
            selector,
            domain,
            key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[h.encode() for h in wanted],
        )
        return bytes(signature) + message

    return sign


def dkim_txt_record(config: DkimSettings) -> str:
    """The TXT record to publish at `{selector}._domainkey.{domain}` for this key."""
    pk = parse_pem_private_key(_read_key(config.key_file))
    rsa = _der(0x30, _der_int(pk["modulus"]) + _der_int(pk["publicExponent"]))
    algorithm = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + _der(0x05, b""))
    spki = _der(0x30, algorithm + _der(0x03, b"\x00" + rsa))
    return f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"


def dkim_dns_record(config: DkimSettings) -> str:
    """The record as a zone file line, the form the README shows, `check` and `dkim keygen` print.

    A TXT string holds 255 bytes at most; a 2048-bit key's record is longer, so it is split into
    several quoted strings, which resolvers join.
    """
    txt = dkim_txt_record(config)
    chunks = " ".join(f'"{txt[i : i + 255]}"' for i in range(0, len(txt), 255))
    return f"{config.selector}._domainkey.{config.domain}. TXT {chunks}"


def generate_dkim_key(bits: int = 2048) -> bytes:
    """A new RSA private key, PEM (PKCS#1), as dkimpy reads it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def write_private_key(path: Path, pem: bytes) -> None:
    """Write a new key file readable by its owner only; an existing file is never replaced.

    :raises FileExistsError: `path` exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never overwrite a key in use; mode 0600 from creation, not chmod-ed afterwards.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # the umask may only remove bits; make it exact
        out.write(pem)


def check_notes(settings: Settings) -> list[str]:
    """One line per fact an operator should know before mail goes out (warnings start with '!').

    :raises ConfigError: a configured DKIM key or link secret cannot be used.
    """
    notes: list[str] = []
    http, delivery = settings.http, settings.delivery
    if http.public_url is None:
        notes.append(
            "! one-click unsubscribe needs http.public_url (and http.listen): mail carries only a "
            "mailto List-Unsubscribe, which Gmail and Yahoo do not count as one-click"
        )
    elif not http.public_url.startswith("https://"):
        notes.append("! http.public_url is not https: RFC 8058 one-click needs an HTTPS URL")
    elif http.listen is None:
        notes.append("! http.public_url is set but http.listen is not: the links would not answer")
    secret = settings.http_secret()
    notes.append(
        "link secret: " + ("from settings" if secret else "generated, kept in the state database")
    )
    if delivery.dkim is None:
        notes.append("! DKIM: not signing here; make sure the relay signs List-Unsubscribe(-Post)")
    else:
        load_signer(delivery.dkim)
        from_domain = delivery.envelope_from.rpartition("@")[2].lower()
        d = delivery.dkim.domain.lower()
        if from_domain != d and not from_domain.endswith("." + d):
            notes.append(f"! DKIM domain {d} is not aligned with the From domain {from_domain}")
        notes.append("DKIM: publish this record:")
        notes.append(f"  {dkim_dns_record(delivery.dkim)}")
    return notes


def _read_key(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise _key_problem(path, f"cannot read: {exc.strerror}") from None
    try:
        pk = parse_pem_private_key(key)
    except (UnparsableKeyError, ValueError, IndexError) as exc:
        raise _key_problem(path, f"not a PEM RSA private key ({exc})") from None
    bits = int(pk["modulus"]).bit_length()
    if bits < MIN_BITS:
        raise _key_problem(path, f"the key has {bits} bits; use at least {MIN_BITS} (2048 advised)")
    return key


def _key_problem(path: Path, message: str) -> ConfigError:
    return ConfigError([ConfigProblem(str(path), 1, 1, "delivery.dkim.key_file", message)])


def _header_names(message: bytes) -> set[str]:
    head = message.split(b"\r\n\r\n", 1)[0]
    return {
        line.split(b":", 1)[0].decode("ascii", "replace").strip().lower()
        for line in head.split(b"\r\n")
        if line and line[:1] not in (b" ", b"\t") and b":" in line
    }


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _der_int(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")  # leading 0 keeps it positive
    return _der(0x02, raw)
