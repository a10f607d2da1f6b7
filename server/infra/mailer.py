"""Outgoing mail through the operator's SMTP server (``HEALTHMATE_SMTP_URL``), with aiosmtplib.

``smtp://user:password@host:587`` upgrades to TLS with STARTTLS when the server offers it; ``smtps://host:465``
speaks TLS from the start. With no URL configured there is no mailer (``Mailer.from_settings`` returns None) and
whatever would have been mailed is only shown to the user who asked for it.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import aiosmtplib

from server.core.config import ConfigError, Settings

log = logging.getLogger(__name__)


class Mailer:
    def __init__(self, url: str, sender: str, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ConfigError("HEALTHMATE_SMTP_URL must look like smtp://user:password@host:587 or smtps://host:465")
        self.sender = sender
        self.options = {
            "hostname": parts.hostname, "port": parts.port or (465 if parts.scheme == "smtps" else 587),
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "use_tls": parts.scheme == "smtps", "timeout": timeout_s,
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> Mailer | None:
        if settings.smtp_url is None:
            return None
        if not settings.smtp_from:
            raise ConfigError("HEALTHMATE_SMTP_URL needs HEALTHMATE_SMTP_FROM (the From address of the mail sent)")
        return cls(settings.smtp_url.get_secret_value(), settings.smtp_from, settings.smtp_timeout_s)

    async def send(self, to: str, subject: str, body: str) -> bool:
        """Hand one plain-text message to the SMTP server; False (logged, not raised) if it was not taken."""
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.sender, to, subject
        message.set_content(body)
        try:
            await aiosmtplib.send(message, **self.options)  # type: ignore[arg-type]
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("mail to %s not sent: %s", to.encode("unicode_escape").decode(), type(exc).__name__)
            return False
        return True
