"""Mail transports: the `Mailer` protocol, SMTP (aiosmtplib) and a local Maildir for trials."""

from __future__ import annotations

from digestd.deliver.transports.base import Mailer, classify_reply
from digestd.deliver.transports.maildir import MaildirMailer
from digestd.deliver.transports.smtp import SmtpMailer

__all__ = ["Mailer", "MaildirMailer", "SmtpMailer", "classify_reply"]
