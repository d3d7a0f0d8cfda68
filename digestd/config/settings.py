"""The settings file: YAML read with positions, validated by pydantic-settings, `DIGESTD_*` env on top."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from digestd.config.positions import allowed_keys, decode, load_yaml, problems_from_validation
from digestd.config.sections import (
    AlertSettings,
    BounceSettings,
    DeliverySettings,
    Duration,
    HttpSettings,
    RelevanceSettings,
    SignupSettings,
    SourceSettings,
)
from digestd.core.addresses import check_address
from digestd.core.errors import ConfigError, ConfigProblem
from digestd.core.redact import redact_url

__all__ = [
    "DEFAULT_CONFIG",
    "Settings",
    "env_warnings",
    "load_settings",
    "read_config_text",
    "settings_address_paths",
]

DEFAULT_CONFIG = Path("/etc/digestd/digestd.yaml")


def _state_location(value: object) -> object:
    """`state:` → a `Path`, or the URL as text when it names a PostgreSQL database."""
    if isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
        return value
    return Path(value) if isinstance(value, str) else value


def settings_address_paths(data: object) -> list[tuple[str | int, ...]]:
    """Where the settings file holds addresses (for `rules.address_notes`)."""
    paths: list[tuple[str | int, ...]] = [("delivery", "from"), ("delivery", "unsubscribe_mailto")]
    admins = data.get("admins") if isinstance(data, dict) else None
    return paths + ([("admins", i) for i in range(len(admins))] if isinstance(admins, list) else [])


class Settings(BaseSettings):
    """Everything an admin sets; built once by the shell and passed down as values."""

    model_config = SettingsConfigDict(
        env_prefix="DIGESTD_",
        env_nested_delimiter="__",
        extra="forbid",
        populate_by_name=True,
    )

    source: SourceSettings = Field(default_factory=SourceSettings)
    sources: list[SourceSettings] | None = Field(None, min_length=1)
    # A file (SQLite, the default) or `postgresql://user@host/db` (several instances may share it).
    state: Annotated[Path | str, BeforeValidator(_state_location)] = Path("var/digestd.sqlite3")
    # The PostgreSQL password, never in the URL people see: DIGESTD_STATE_PASSWORD, a file, or
    # libpq's own PGPASSWORD / ~/.pgpass.
    state_password: SecretStr | None = None
    state_password_file: Path | None = None
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    subscribers: Path = Path("subscribers.yaml")
    lookback: Duration = Field(timedelta(days=7), description="how far back a digest looks")
    site_name: str = "Paper Digest"
    max_late: Duration | None = None  # a missed digest older than this is skipped, not sent late
    templates: Path | None = None
    # Addresses that get one mail when the source or delivery breaks down, and one when it recovers.
    admins: list[Annotated[str, AfterValidator(check_address)]] = Field(default_factory=list)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    bounces: BounceSettings = Field(default_factory=BounceSettings)
    relevance: RelevanceSettings = Field(default_factory=RelevanceSettings)
    signup: SignupSettings = Field(default_factory=SignupSettings)
    # How often the daemon looks at both files' mtimes to reload by itself; 0 turns it off (SIGHUP
    # still reloads).
    config_check_every: Duration = timedelta(seconds=5)
    # This daemon's name among several on one PostgreSQL database: logs, `digestd status`,
    # /metrics, and the claims it holds. Unique per running daemon; default: host-pid.
    instance: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    # How long a message this daemon claimed stays its own without a heartbeat: a daemon that
    # died leaves its claims to the others once it passes (re-sent, same Message-ID).
    lease: Duration = Field(timedelta(minutes=2), description="how long a claim outlives its owner")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must win over it.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _one_way_to_name_sources(self) -> Settings:
        if self.sources is not None and "source" in self.model_fields_set:
            raise ValueError("set either source (one) or sources (a list), not both")
        names = [s.key for s in self.all_sources()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"source names must be unique; repeated: {', '.join(twice)}")
        return self

    def all_sources(self) -> list[SourceSettings]:
        """The configured sources: the `sources` list, or the single `source`."""
        return list(self.sources) if self.sources is not None else [self.source]

    def state_url(self) -> str | None:
        """The PostgreSQL URL `state` names, or None for a state file."""
        return self.state if isinstance(self.state, str) else None

    def state_secret(self) -> str | None:
        """The state database's password from DIGESTD_STATE_PASSWORD or `state_password_file`
        (None: libpq looks for PGPASSWORD and ~/.pgpass itself).

        :raises ConfigError: the file cannot be read.
        """
        if self.state_password is not None:
            return self.state_password.get_secret_value()
        path = self.state_password_file or _credential("state_password")
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            problem = ConfigProblem(str(path), 1, 1, "state_password_file", str(exc.strerror))
            raise ConfigError([problem]) from None

    def smtp_password(self) -> str | None:
        """The SMTP password from the environment, `password_file`, or systemd's credential."""
        d = self.delivery
        if d.password is not None:
            return d.password.get_secret_value()
        path = d.password_file or _credential("smtp_password")
        return path.read_text(encoding="utf-8").strip() if path else None

    def bounce_warnings(self) -> list[str]:
        """What `digestd check` says when VERP and the bounce inboxes do not go together."""
        if self.delivery.verp and not self.bounces.enabled:
            return [
                f"! delivery.verp is set but no bounces.maildir or bounces.imap: bounces to "
                f"{self.delivery.verp} are never read"
            ]
        if self.bounces.enabled and not self.delivery.verp:
            return [
                "! bounces are read but delivery.verp is not set: no bounce can be matched to its "
                "message, so every one is ignored"
            ]
        return []

    def imap_password(self) -> str | None:
        """The bounce mailbox's IMAP password (environment or `password_file`); None: no IMAP.

        :raises ConfigError: when the file cannot be read.
        """
        imap = self.bounces.imap
        if imap is None:
            return None
        if imap.password is not None:
            return imap.password.get_secret_value()
        path = imap.password_file
        try:
            return path.read_text(encoding="utf-8").strip() if path else None
        except OSError as exc:
            problem = ConfigProblem(
                str(path), 1, 1, "bounces.imap.password_file", str(exc.strerror)
            )
            raise ConfigError([problem]) from None

    def http_secret(self) -> bytes | None:
        """The link-signing secret from the environment, `secret_file` or systemd's credential.

        :raises ConfigError: when it is shorter than 16 bytes (forgeable) or unreadable.
        """
        h = self.http
        if h.secret is not None:
            value = h.secret.get_secret_value().encode()
        else:
            path = h.secret_file or _credential("http_secret")
            if path is None:
                return None
            try:
                value = path.read_bytes().strip()
            except OSError as exc:
                problem = ConfigProblem(str(path), 1, 1, "http.secret_file", str(exc.strerror))
                raise ConfigError([problem]) from None
        if len(value) < 16:
            problem = ConfigProblem("<settings>", 1, 1, "http.secret", "use 16 bytes or more")
            raise ConfigError([problem])
        return value

    def redacted(self) -> dict[str, Any]:
        """The effective settings for display, secrets shown as <redacted>."""
        data = self.model_dump(mode="json", by_alias=True)
        data["state"] = redact_url(str(data["state"]))  # a password written into the URL
        if data.get("state_password") is not None:
            data["state_password"] = "<redacted>"
        for section, key in (("delivery", "password"), ("source", "token"), ("http", "secret")):
            if data[section].get(key) is not None:
                data[section][key] = "<redacted>"
        imap = data["bounces"].get("imap")
        if imap and imap.get("password") is not None:
            imap["password"] = "<redacted>"
        # One list, whichever form the file used: what will actually be polled.
        data.pop("source", None)
        data["sources"] = [s.model_dump(mode="json") for s in self.all_sources()]
        for source in data["sources"]:
            if source.get("token") is not None:
                source["token"] = "<redacted>"
            source["url"] = redact_url(source["url"])  # credentials in a feed's URL
        return data

    def in_force(self) -> dict[str, Any]:
        """`redacted()` less what the configured kinds ignore (no SMTP port for a Maildir)."""
        data = self.redacted()
        unused = _MAILDIR_ONLY if self.delivery.kind == "smtp" else _SMTP_ONLY
        data["delivery"] = {k: v for k, v in data["delivery"].items() if k not in unused}
        data["sources"] = [_source_in_force(source) for source in data["sources"]]
        if not self.bounces.enabled:  # no inbox: nothing of the section is in force
            data.pop("bounces", None)
        if not self.signup.enabled:
            data["signup"] = {"enabled": False}  # its other keys do nothing while it is off
        return {k: v for k, v in data.items() if v is not None and v != []}  # unset: not in force


# Which keys apply to what: `digestd check` shows the settings in force, not every default.
_SMTP_ONLY = frozenset(
    {"host", "port", "security", "username", "password", "password_file", "validate_certs",
     "timeout", "data_timeout", "max_per_connection", "connections", "rate_limit"}
)  # fmt: skip
_MAILDIR_ONLY = frozenset({"path"})
_SOURCE_ANY = frozenset({"name", "kind", "url", "poll_every"})
_HTTP_SOURCE = _SOURCE_ANY | {"timeout", "retries", "max_bytes"}
_ARXIV = _HTTP_SOURCE | {"min_interval"}
_SOURCE_KEYS: dict[str, frozenset[str]] = {
    "file": _SOURCE_ANY,
    "huggingface": _SOURCE_ANY | {"timeout", "retries", "days", "listing", "token"},
    "arxiv": _ARXIV | {"categories", "query", "max_results", "page_size"},
    "arxiv_rss": _ARXIV | {"categories", "announce_types"},
    "feed": _HTTP_SOURCE,
}


def _source_in_force(source: dict[str, Any]) -> dict[str, Any]:
    keys = _SOURCE_KEYS[source["kind"]]
    if source["kind"] == "arxiv" and source.get("query"):
        keys = keys - {"categories"}  # a raw query replaces them
    return {k: v for k, v in source.items() if k in keys}


def _credential(name: str) -> Path | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    path = Path(directory, name) if directory else None
    return path if path and path.is_file() else None


def read_config_text(path: Path) -> str:
    """An admin file's text.

    :raises ConfigError: when it cannot be read, or at the first byte that is not UTF-8.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        problem = ConfigProblem(str(path), 1, 1, "", f"cannot read: {exc.strerror}")
        raise ConfigError([problem]) from exc
    return decode(data, file=str(path))


def load_settings(path: Path) -> Settings:
    """Read and validate the settings file; relative paths in it are made relative to its folder.

    :raises ConfigError: with every problem as FILE:LINE:COLUMN: field: message.
    """
    file = str(path)
    data, marks = load_yaml(read_config_text(path), file=file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(file, 1, 1, "", "the settings file must be a mapping")])
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        problems = problems_from_validation(exc, marks, file=file, schema=Settings)
        raise ConfigError(_blame_environment(problems, os.environ)) from None
    return _resolve_paths(settings, path.parent)


ENV_PREFIX = "DIGESTD_"
# Read by the command line itself, or by the daemon (bench/web.py's baseline), not a setting.
_ENV_OTHER = frozenset({"DIGESTD_CONFIG", "DIGESTD_COMPOSE_ON_LOOP"})


def _env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """Each `DIGESTD_*` variable by the dotted field it sets (`delivery.port`)."""
    return {
        ".".join(name[len(ENV_PREFIX) :].lower().split("__")): name
        for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in _ENV_OTHER
    }


def _blame_environment(
    problems: list[ConfigProblem], environ: Mapping[str, str]
) -> list[ConfigProblem]:
    """A value the environment set is reported at its variable, not at the YAML line it replaced."""
    overrides = _env_overrides(environ)

    def source(problem: ConfigProblem) -> ConfigProblem:
        for field, name in overrides.items():
            if problem.field == field or problem.field.startswith((field + ".", field + "[")):
                where = f"environment variable {name}"
                return ConfigProblem(where, 0, 0, problem.field, problem.message)
        # A section's own check may fail on a value the environment put in it: say so.
        inside = [n for f, n in overrides.items() if f.startswith(problem.field + ".")]
        if inside:
            return replace(problem, message=f"{problem.message} (set by {', '.join(inside)})")
        return problem

    return [source(p) for p in problems]


def env_warnings(environ: Mapping[str, str]) -> list[str]:
    """`DIGESTD_*` variables that set nothing (pydantic-settings ignores them without a word)."""
    known = _env_names(())
    warnings = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper in _ENV_OTHER:
            continue
        close = difflib.get_close_matches(upper, sorted(known | _ENV_OTHER), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"! {name} is not a setting and is ignored{hint}")
    return warnings


def _env_names(path: tuple[str, ...]) -> set[str]:
    """Every variable that sets a field: DIGESTD_STATE, DIGESTD_DELIVERY__PORT…"""
    names: set[str] = set()
    for key in allowed_keys(Settings, path):
        names.add((ENV_PREFIX + "__".join((*path, key))).upper())
        names |= _env_names((*path, key))
    return names


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def rel(p: Path) -> Path:
        return p if p.is_absolute() else Path(os.path.normpath(base / p))

    delivery = settings.delivery.model_copy(
        update={
            "path": rel(settings.delivery.path),
            "password_file": rel(settings.delivery.password_file)
            if settings.delivery.password_file
            else None,
        }
    )
    if settings.delivery.dkim is not None:
        dkim = settings.delivery.dkim
        dkim = dkim.model_copy(update={"key_file": rel(dkim.key_file)})
        delivery = delivery.model_copy(update={"dkim": dkim})
    bounces = settings.bounces
    if bounces.maildir is not None:
        bounces = bounces.model_copy(update={"maildir": rel(bounces.maildir)})
    if bounces.imap is not None:
        imap = bounces.imap
        files = {"password_file": imap.password_file, "ca_file": imap.ca_file}
        imap = imap.model_copy(update={k: rel(v) for k, v in files.items() if v is not None})
        bounces = bounces.model_copy(update={"imap": imap})
    http = settings.http
    if http.secret_file is not None:
        http = http.model_copy(update={"secret_file": rel(http.secret_file)})

    def file_url(source: SourceSettings) -> SourceSettings:
        if source.kind == "file" and "://" not in source.url:
            return source.model_copy(update={"url": str(rel(Path(source.url)))})
        return source

    source = file_url(settings.source)
    sources = [file_url(s) for s in settings.sources] if settings.sources is not None else None
    return settings.model_copy(
        update={
            "state": rel(settings.state) if isinstance(settings.state, Path) else settings.state,
            "state_password_file": rel(settings.state_password_file)
            if settings.state_password_file
            else None,
            "subscribers": rel(settings.subscribers),
            "templates": rel(settings.templates) if settings.templates else None,
            "delivery": delivery,
            "source": source,
            "http": http,
            "bounces": bounces,
            "sources": sources,
        }
    )
