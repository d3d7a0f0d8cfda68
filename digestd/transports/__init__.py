"""Mail transports: the `Mailer` protocol, SMTP (aiosmtplib) and a local Maildir for trials."""

from __future__ import annotations

from digestd.transports.base import Mailer, classify_reply
from digestd.transports.maildir import MaildirMailer
from digestd.transports.smtp import SmtpMailer

__all__ = ["Mailer", "MaildirMailer", "SmtpMailer", "classify_reply"]
