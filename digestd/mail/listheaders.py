"""The list headers of a digest mail (RFC 2369, 2919, 8058) and the links the body shows.

Pure: the pipeline passes in the tokens and addresses; this module only formats them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

from digestd.mail.linktokens import feedback_token

__all__ = [
    "FeedbackLinks",
    "MailLinks",
    "default_list_id",
    "format_list_id",
    "list_headers",
    "mail_links",
    "normalise_list_id",
]

_ATOM_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')


@dataclass(frozen=True, slots=True)
class FeedbackLinks:
    """What signs one reader's "more / less like this" links: the "feedback" key, their id and
    address key, the site's base URL. Plain values: a compose worker process receives it."""

    base: str
    key: bytes
    subscriber_id: int
    email: str

    def pair(self, paper_id: str) -> tuple[str, str]:
        """The ("more like this", "less like this") URLs of one paper."""
        more = feedback_token(self.key, self.subscriber_id, self.email, paper_id, 1)
        less = feedback_token(self.key, self.subscriber_id, self.email, paper_id, -1)
        return f"{self.base}/feedback/{more}", f"{self.base}/feedback/{less}"


@dataclass(frozen=True, slots=True)
class MailLinks:
    """Where a recipient can go from this mail; None when the operator has no such page."""

    unsubscribe_url: str | None = None  # HTTPS one-click (RFC 8058) when http.public_url is set
    unsubscribe_mailto: str | None = None  # mailto:…?subject=unsubscribe
    view_url: str | None = None
    manage_url: str | None = None  # the reader's preferences page (needs http.public_url)
    feedback: FeedbackLinks | None = None  # "more / less like this" per paper (issue #16)

    @property
    def visible_unsubscribe(self) -> str | None:
        """The link the body shows: the web page (it confirms with a button), else the mailto."""
        return self.unsubscribe_url or self.unsubscribe_mailto


def mail_links(
    *,
    public_url: str | None,
    unsubscribe_token: str | None,
    view_token: str | None,
    mailto: str | None,
    manage_token: str | None = None,
    feedback: FeedbackLinks | None = None,
) -> MailLinks:
    base = public_url.rstrip("/") if public_url else None
    return MailLinks(
        unsubscribe_url=f"{base}/unsubscribe/{unsubscribe_token}"
        if base and unsubscribe_token
        else None,
        unsubscribe_mailto=f"mailto:{quote(mailto, safe='@')}?subject=unsubscribe"
        if mailto
        else None,
        view_url=f"{base}/view/{view_token}" if base and view_token else None,
        manage_url=f"{base}/preferences/{manage_token}" if base and manage_token else None,
        feedback=feedback if base else None,
    )


def list_headers(links: MailLinks, list_id: str) -> dict[str, str]:
    """List-Id always; List-Unsubscribe when there is a way out; -Post only with an HTTPS URL.

    RFC 8058 one-click needs an HTTPS URI: a plain-http public_url gets no List-Unsubscribe-Post.
    """
    headers = {"List-Id": list_id}
    targets = [u for u in (links.unsubscribe_url, links.unsubscribe_mailto) if u]
    if targets:
        headers["List-Unsubscribe"] = ", ".join(f"<{u}>" for u in targets)
    if links.unsubscribe_url and links.unsubscribe_url.startswith("https://"):
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return headers


def default_list_id(site_name: str, domain: str) -> str:
    return format_list_id(site_name, f"digestd.{domain}")


def format_list_id(label: str, identifier: str) -> str:
    """`"Label" <identifier>`; the label folded to ASCII (RFC 2919 has no room for encoded words
    around the identifier), and dropped when nothing printable is left."""
    ascii_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    ascii_label = " ".join("".join(c for c in ascii_label if c.isprintable()).split())
    ascii_label = ascii_label.replace("\\", "").replace('"', "")
    if not ascii_label:
        return f"<{identifier}>"
    if _ATOM_SPECIALS.search(ascii_label):
        return f'"{ascii_label}" <{identifier}>'
    return f"{ascii_label} <{identifier}>"


def normalise_list_id(value: str) -> str:
    """An admin's `delivery.list_id` ("Label <id>") with the label made header-safe."""
    label, _, rest = value.rpartition("<")
    return format_list_id(label.strip().strip('"'), rest.rstrip(">").strip())
