"""The settings file's sections (sources, delivery, DKIM, HTTP, alerts, signup) and its durations.

Each section is a pydantic model with its own cross-field checks; config/settings.py assembles
them into `Settings` and owns loading, `DIGESTD_*` overrides and the in-force display.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    model_validator,
)

from digestd.core.addresses import check_address, parse_mailbox
from digestd.rules.schema import check_cron, check_timezone

__all__ = [
    "HF_URL",
    "AlertSettings",
    "AnnounceType",
    "BounceSettings",
    "DeliverySettings",
    "RelevanceSettings",
    "DkimSettings",
    "Duration",
    "HttpSettings",
    "ImapSettings",
    "SourceKind",
    "SignupDefaults",
    "SignupSettings",
    "SourceSettings",
    "format_duration",
    "parse_duration",
    "validate_mailbox",
]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """'30m', '1h30m', '7d', '90s' or a number of seconds → timedelta.

    :raises ValueError: for anything else, naming the accepted forms.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    text = str(value).strip().replace(" ", "")
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration; use forms like 90s, 30m, 1h30m, 7d")
    return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in parts))


def format_duration(delta: timedelta) -> str:
    """3h12m, 2d4h, 45s: the inverse of `parse_duration`, short enough for logs and `digestd check`."""
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


SourceKind = Literal["huggingface", "file", "arxiv", "arxiv_rss", "feed"]
HF_URL = "https://huggingface.co/api/daily_papers"
# Where each kind polls unless `url` says otherwise (`feed` has no sensible default).
_DEFAULT_URLS: dict[str, str] = {
    "huggingface": HF_URL,
    "arxiv": "https://export.arxiv.org/api/query",
    "arxiv_rss": "https://rss.arxiv.org/rss/",
}
AnnounceType = Literal["new", "cross", "replace", "replace-cross"]


def _digest_types() -> list[AnnounceType]:
    return ["new", "cross"]  # replacements are papers already announced


_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_CATEGORY = r"^[A-Za-z-]+(\.[A-Za-z-]+)?$"


class SourceSettings(_Section):
    """One source; `name` defaults to its kind. Options unused by a kind are ignored."""

    name: Annotated[str, Field(pattern=_NAME)] | None = None
    kind: SourceKind = "huggingface"
    url: str = HF_URL
    poll_every: Duration = timedelta(minutes=30)
    days: int = Field(
        2, ge=1, le=14, description="listing days fetched per poll (today, yesterday…)"
    )
    listing: Literal["daily", "trending"] = (
        "daily"  # huggingface: sort=trending brings older papers
    )
    timeout: Duration = timedelta(seconds=30)
    token: SecretStr | None = (
        None  # Hugging Face token: raises the rate limit; DIGESTD_SOURCE__TOKEN
    )
    retries: int = Field(3, ge=0, le=10, description="retries of a failed request within a poll")
    # arxiv / arxiv_rss
    categories: list[Annotated[str, Field(pattern=_CATEGORY)]] = Field(default_factory=list)
    query: str | None = None  # arxiv: a raw search_query, instead of the categories
    max_results: int = Field(200, ge=1, le=30000)
    page_size: int = Field(100, ge=1, le=2000)
    announce_types: list[AnnounceType] = Field(default_factory=_digest_types, min_length=1)
    # arxiv's terms: one request every 3 s, shared by every arxiv and arxiv_rss source
    min_interval: Duration = timedelta(seconds=3)
    max_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="a larger reply fails the poll")

    @model_validator(mode="after")
    def _check_kind(self) -> SourceSettings:
        if "url" not in self.model_fields_set and self.kind in _DEFAULT_URLS:
            self.url = _DEFAULT_URLS[self.kind]
        if self.kind == "feed" and "url" not in self.model_fields_set:
            raise ValueError("a feed source needs a url")
        if self.kind == "arxiv" and not (self.categories or self.query):
            raise ValueError("an arxiv source needs categories or a query")
        if self.kind == "arxiv_rss" and not self.categories:
            raise ValueError("an arxiv_rss source needs categories")
        if self.name is None:
            self.name = self.kind
        return self

    @property
    def key(self) -> str:
        return self.name or self.kind


class DkimSettings(_Section):
    """DKIM signing at enqueue time: publish the key at `{selector}._domainkey.{domain}`."""

    selector: str = Field(pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
    domain: str = Field(pattern=r"^[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$")
    key_file: Path  # PEM RSA private key (PKCS#1 or PKCS#8), 1024 bits at least, 2048 advised


def validate_mailbox(value: str) -> str:
    """`delivery.from` as the mail builder reads it ("addr" or "Name <addr>"); an IDN domain is
    rewritten to its A-labels, the name kept as written.

    :raises ValueError: the builder would refuse it.
    """
    name, addr = parse_mailbox(value)
    if addr == value.strip().removesuffix(">").rpartition("<")[2].strip():
        return value
    if not name:
        return addr
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{addr}>'


def check_verp(value: str) -> str:
    """The VERP base address: plain, without '+', short enough for the token.

    :raises ValueError: otherwise.
    """
    address = check_address(value)
    local = address.rpartition("@")[0]
    if "+" in local:
        raise ValueError("must not contain '+': digestd adds '+TOKEN' to it itself")
    if len(local) > 31:  # RFC 5321: a local part has at most 64 octets; the token takes 33
        raise ValueError("its local part must be at most 31 characters")
    return address


class DeliverySettings(_Section):
    kind: Literal["smtp", "maildir"] = "smtp"
    host: str = "localhost"
    port: int = Field(25, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "starttls"
    sender: Annotated[str, AfterValidator(validate_mailbox)] = Field(
        "Paper Digest <digest@localhost>", alias="from"
    )
    username: str | None = None
    password: SecretStr | None = None  # prefer DIGESTD_DELIVERY__PASSWORD or password_file
    password_file: Path | None = None
    validate_certs: bool = True
    timeout: Duration = timedelta(seconds=30)
    data_timeout: Duration = timedelta(minutes=10)  # RFC 5321 §4.5.3.2: end of DATA may take long
    max_per_connection: int = Field(100, ge=1)
    max_attempts: int = Field(8, ge=1, description="tries before a message is failed")
    connections: int = Field(1, ge=1, le=64, description="SMTP connections used in parallel")
    rate_limit: float = Field(
        0, ge=0, description="messages per second over all connections; 0: none"
    )
    suspend_after: int = Field(
        3, ge=1, description="consecutive hard failures (5xx) after which an address is suspended"
    )
    keep_days: int = Field(
        7, ge=0, description="days a sent, failed or expired message's bytes are kept; rows stay"
    )
    path: Path = Path("var/mail")
    # RFC 2919, e.g. "Paper Digest <paper-digest.example.org>"; default: site_name <digestd.DOMAIN>
    list_id: str | None = Field(None, pattern=r"^[^<>]*<[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+>$")
    # A mailto List-Unsubscribe next to the HTTPS one; without http.public_url it is the only one
    # (and defaults to the From address).
    unsubscribe_mailto: Annotated[str, AfterValidator(check_address)] | None = None
    dkim: DkimSettings | None = None
    # VERP: each message's envelope sender is bounces+TOKEN@domain, so a bounce names its message.
    verp: Annotated[str, AfterValidator(check_verp)] | None = None

    @model_validator(mode="after")
    def _check(self) -> DeliverySettings:
        if self.kind == "smtp" and self.username and self.security == "none":
            raise ValueError(
                "delivery.security must be starttls or tls when credentials are set "
                "(a password is never sent over plaintext)"
            )
        if self.kind == "smtp" and not self.username and (self.password or self.password_file):
            # Without a username there is no AUTH: the mail would go out unauthenticated.
            raise ValueError(
                "a password (password, password_file or DIGESTD_DELIVERY__PASSWORD) is set but "
                "username is not, so the password would never be used: set delivery.username, or remove the password"
            )
        return self

    def warnings(self) -> list[str]:
        """What `digestd check` and the daemon's start-up say about these settings (start "!")."""
        if self.kind != "smtp" or self.validate_certs:
            return []
        return [
            "! delivery.validate_certs is false: the relay's TLS certificate is not checked, so "
            "anyone on the way can pose as the relay and read the mail"
            + (" and the SMTP password" if self.username else "")
        ]

    @property
    def envelope_from(self) -> str:
        return parse_mailbox(self.sender)[1]


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be more than 0s")
    return value


class HttpSettings(_Section):
    listen: str | None = None  # e.g. 127.0.0.1:8025; unset: no HTTP listener
    public_url: str | None = None  # e.g. https://digest.example.org: base of links in the mail
    secret: SecretStr | None = None  # signs unsubscribe links; DIGESTD_HTTP__SECRET
    secret_file: Path | None = None  # or a file (systemd: LoadCredential=http_secret)
    view_days: int = Field(30, ge=0, description="days a web copy stays online; 0: none")
    # A client must send each whole request within this time (slow headers are cut off), and the
    # listener keeps at most this many connections (never more than a quarter of the file limit).
    request_timeout: Annotated[Duration, AfterValidator(_positive)] = timedelta(seconds=10)
    max_connections: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _check(self) -> HttpSettings:
        url = self.public_url
        if url is not None:
            if not re.fullmatch(r"https?://[^\s/?#]+(?:/[^\s?#]*)?", url):
                raise ValueError(f"http.public_url {url!r} must be an http(s) URL without ?query")
            self.public_url = url.rstrip("/")
        return self


class AlertSettings(_Section):
    """When the admins get mail: one when a problem starts, one when it is over."""

    source_down_after: Duration = timedelta(hours=2)  # polls failing for this long
    delivery_failures: int = Field(5, ge=1)  # this many sends in a row not accepted


class ImapSettings(_Section):
    """An IMAP mailbox bounces arrive in; the password from `password_file` or
    DIGESTD_BOUNCES__IMAP__PASSWORD, never from the settings file's text alone."""

    host: str
    port: int = Field(993, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    username: str
    password: SecretStr | None = None
    password_file: Path | None = None
    folder: str = "INBOX"
    ca_file: Path | None = None  # a private CA's certificate, e.g. a self-signed server's
    validate_certs: bool = True
    timeout: Annotated[Duration, AfterValidator(_positive)] = timedelta(seconds=30)

    @model_validator(mode="after")
    def _check(self) -> ImapSettings:
        if self.password is None and self.password_file is None:
            raise ValueError("set password_file (or DIGESTD_BOUNCES__IMAP__PASSWORD)")
        if self.security == "none" and self.host not in ("localhost", "127.0.0.1", "::1"):
            raise ValueError("security none sends the password in the clear: only to localhost")
        return self


class RelevanceSettings(_Section):
    """How papers become vectors for the readers' relevance models (issue #16): TF-IDF (built in)
    or sentence embeddings (`pip install 'digestd[embeddings]'`, a model loaded offline)."""

    backend: Literal["tfidf", "embeddings"] = "tfidf"


class BounceSettings(_Section):
    """Where bounces and complaints arrive (a Maildir, an IMAP folder, or both) and how often
    they are read; nothing is read when neither is set."""

    maildir: Path | None = None
    imap: ImapSettings | None = None
    check_every: Annotated[Duration, AfterValidator(_positive)] = timedelta(minutes=5)
    processed: Literal["flag", "move", "delete"] = "flag"  # what becomes of a handled message
    move_to: str = Field("Processed", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
    max_bytes: int = Field(2 * 1024 * 1024, ge=4096, description="a larger message is ignored")

    @property
    def enabled(self) -> bool:
        return self.maildir is not None or self.imap is not None


_DOMAIN = r"^[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$"
_TOPIC = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_TopicName = Annotated[str, Field(pattern=_TOPIC)]
_Label = Annotated[str, Field(min_length=1, max_length=200)]


class SignupDefaults(_Section):
    """What a reader who signs up gets unless they choose otherwise (checked like subscribers.yaml's
    `defaults`, by rules/schema.py, when the readers' set is built)."""

    schedule: Annotated[str, AfterValidator(check_cron)] = "0 7 * * mon-fri"
    timezone: Annotated[str, AfterValidator(check_timezone)] = "UTC"
    max_papers: int = Field(20, ge=1, le=1000)


class SignupSettings(_Section):
    """Readers subscribing themselves (issue 15): who may, what they may pick, how often mail goes."""

    enabled: bool = False
    # Only addresses at these domains (or their subdomains) may join; empty: anyone.
    allowed_domains: list[Annotated[str, Field(pattern=_DOMAIN)]] = Field(default_factory=list)
    # rule set name (in the subscribers file) → the label a reader sees next to its checkbox
    topics: dict[_TopicName, _Label] = Field(default_factory=dict)
    defaults: SignupDefaults = Field(default_factory=SignupDefaults)
    confirm_within: Annotated[Duration, AfterValidator(_positive)] = timedelta(hours=48)
    # At most one confirmation mail per address per `confirm_every`; `per_ip` sign-ups per IP an hour.
    confirm_every: Annotated[Duration, AfterValidator(_positive)] = timedelta(minutes=10)
    per_ip: int = Field(20, ge=1, description="sign-up requests per client address per hour")

    @model_validator(mode="after")
    def _check(self) -> SignupSettings:
        self.allowed_domains = [d.lower().strip(".") for d in self.allowed_domains]
        for key, label in self.topics.items():
            if any(ord(c) < 32 or ord(c) == 127 for c in label):
                raise ValueError(f"signup.topics.{key}: a label may not hold control characters")
        return self

    def domain_allowed(self, address: str) -> bool:
        """Whether `address` (already checked) may sign up: its domain is, or is under, one listed."""
        if not self.allowed_domains:
            return True
        domain = address.rpartition("@")[2].lower()
        return any(domain == d or domain.endswith("." + d) for d in self.allowed_domains)
