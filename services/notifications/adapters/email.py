"""E-mail through SMTP. ``SMTP_URL``: smtp://[user:password@]host:port, or
smtps:// for TLS from the first byte; ``?starttls=1`` upgrades a plain one."""
from __future__ import annotations

import smtplib
import uuid
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import parse_qs, unquote, urlparse

from services.notifications.domain.model import Message

SMTP_TIMEOUT = 10.0


class EmailSender:
    channel = "email"

    def __init__(self, smtp_url: str, sender: str):
        url = urlparse(smtp_url)
        if url.scheme not in ("smtp", "smtps"):
            raise ValueError("SMTP_URL must start with smtp:// or smtps://")
        self.tls = url.scheme == "smtps"
        self.starttls = parse_qs(url.query).get("starttls", ["0"])[0] in ("1", "true", "yes")
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (465 if self.tls else 25)
        self.username = unquote(url.username) if url.username else None
        self.password = unquote(url.password) if url.password else None
        self.sender = sender

    def send(self, address: str, message: Message, *, message_key: str) -> None:
        """Raise on any failure; the caller decides about retrying."""
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = address
        email["Subject"] = message.subject
        email["Date"] = formatdate(localtime=False)
        # stable per delivery, so a receiving system can drop a rare repeat
        email["Message-ID"] = f"<{uuid.uuid5(uuid.NAMESPACE_URL, message_key)}@warmi>"
        email.set_content(message.body)
        smtp_cls = smtplib.SMTP_SSL if self.tls else smtplib.SMTP
        with smtp_cls(self.host, self.port, timeout=SMTP_TIMEOUT) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(email)
