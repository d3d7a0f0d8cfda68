"""The reader's pages as HTML responses: one Jinja environment over templates/web/, the security
headers the unsubscribe page sends, and the one script the sign-up form runs (by its hash).

Every page works without JavaScript; the script only preselects the browser's time zone, and the
Content-Security-Policy allows exactly that script and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

import jinja2
from markupsafe import Markup
from starlette.responses import HTMLResponse, Response

from digestd.mail.paperview import wrap
from digestd.mail.render import templates_dir

__all__ = ["FEEDBACK_SCRIPT", "HEADERS", "Pages", "mail_environment", "zones"]

HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:;"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}

# Preselect the browser's zone unless the reader already chose one (a form shown again).
ZONE_SCRIPT = (
    "(function(){var s=document.getElementById('timezone');if(!s||s.dataset.chosen)return;"
    "var z;try{z=Intl.DateTimeFormat().resolvedOptions().timeZone}catch(e){return}"
    "for(var i=0;i<s.options.length;i++){if(s.options[i].value===z){s.selectedIndex=i;break}}})();"
)
# Issue #16: the feedback page records by POST at once where script runs (a GET never records).
FEEDBACK_SCRIPT = (
    "(function(){var f=document.getElementById('feedback-form');"
    "if(f&&!f.dataset.sent){f.dataset.sent='1';f.submit()}})();"
)


def _script_headers(script: str) -> dict[str, str]:
    """HEADERS with a CSP that allows exactly `script`, by its hash, and nothing else."""
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = HEADERS["Content-Security-Policy"] + f"; script-src 'sha256-{digest}'"
    return {**HEADERS, "Content-Security-Policy": policy}


_SCRIPT_HEADERS = {script: _script_headers(script) for script in (ZONE_SCRIPT, FEEDBACK_SCRIPT)}


@cache
def zones() -> tuple[str, ...]:
    """The IANA zones a reader may pick: the canonical Area/City names, plus UTC."""
    named = (
        z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/"))
    )
    return ("UTC", *sorted(named))


def _environment(extra_dir: Path | None) -> jinja2.Environment:
    dirs = [d for d in (extra_dir, templates_dir()) if d is not None]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["indent_wrap"] = wrap
    return env


def mail_environment(extra_dir: Path | None = None, *, html: bool) -> jinja2.Environment:
    """For the confirmation mails: escaped for the HTML part, plain for the text part."""
    env = _environment(extra_dir)
    env.autoescape = html
    return env


class Pages:
    """Renders the reader's pages with the site's name in each."""

    def __init__(self, site_name: str, extra_dir: Path | None = None) -> None:
        self.site_name = site_name
        self.env = _environment(extra_dir)

    def render(
        self,
        template: str,
        title: str,
        *,
        status: int = 200,
        script: bool | str = False,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> Response:
        """`script`: True for the time-zone script, or one of this module's scripts by text."""
        text = ZONE_SCRIPT if script is True else script or ""
        html = self.env.get_template(f"web/{template}").render(
            title=title,
            site_name=self.site_name,
            script=Markup(text) if text else "",
            **context,
        )
        base = _SCRIPT_HEADERS[text] if text else HEADERS
        return HTMLResponse(html, status_code=status, headers={**base, **(headers or {})})

    def message(
        self,
        title: str,
        *lines: str,
        status: int = 200,
        form: Mapping[str, Any] | None = None,
        link: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        script: str = "",
    ) -> Response:
        """A short page: a title, a few sentences, perhaps one button (a POST form) or a link."""
        return self.render(
            "message.html.j2", title, status=status, lines=lines, form=form, link=link,
            headers=headers, body="", script=script,
        )  # fmt: skip
