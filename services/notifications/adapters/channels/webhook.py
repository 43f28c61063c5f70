"""Webhooks: a signed JSON POST to an organisation's own URL.

The body: ``{"id": key, "kind", "case_code", "link", "text", "sent_at"}``
(``sent_at`` in UTC, ISO 8601), with the headers ``X-Warmi-Delivery: key``,
``X-Warmi-Timestamp`` and ``X-Warmi-Signature`` of
``contracts.webhook_signature``, which receivers use to check them.

What holds:

- Every request is signed with the first of the configured secrets
  (``WEBHOOK_SECRET``, comma-separated for rotation). With none configured
  nothing is sent: ``PermanentRejection("no-secret")``.
- The URL is https, or http to this machine only (``localhost``,
  ``127.0.0.1``, ``::1``: trying it out): anything else is
  ``PermanentRejection("bad-address")``, as a body carrying a case code never
  crosses a network in clear. Redirects are not followed.
- Any 2xx is a ``Receipt``; failures as in ``channels.http``.
- A repeat of a delivery carries the same id, so that the receiver can drop it.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import urlsplit

from contracts.webhook_signature import DELIVERY, SIGNATURE, TIMESTAMP, secrets_of, sign
from services.notifications.adapters.channels import http
from services.notifications.adapters.channels.base import Outgoing, PermanentRejection, Receipt

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def acceptable_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port  # .port raises ValueError when it is no port number
    except ValueError:
        return False
    if not host or port == 0 or parts.username or parts.password:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK)


def payload(message: Outgoing, *, key: str, sent_at: float) -> bytes:
    """The body as sent and signed: compact JSON, UTF-8."""
    return json.dumps({
        "id": key,
        "kind": message.kind,
        "case_code": message.case_code,
        "link": message.link,
        "text": message.text,
        "sent_at": datetime.fromtimestamp(sent_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class WebhookSender:
    channel = "webhook"

    def __init__(self, secrets: str | list[str] | None, *, timeout: tuple[float, float] = http.TIMEOUT,
                 pool_size: int = 10, clock: Callable[[], float] = time.time):
        self.secrets = secrets_of(secrets or [])
        self.timeout = timeout
        self.clock = clock
        self.session = http.new_session(pool_size)

    def send(self, address: str, message: Outgoing, *, key: str) -> Receipt:
        """POST ``message`` to the URL ``address``, signed."""
        if not self.secrets:
            raise PermanentRejection("no-secret")
        if not acceptable_url(address):
            raise PermanentRejection("bad-address")
        now = self.clock()
        timestamp = int(now)
        body = payload(message, key=key, sent_at=now)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            DELIVERY: key,
            TIMESTAMP: str(timestamp),
            SIGNATURE: sign(self.secrets[0], timestamp, body),
        }
        status, _ = http.post(self.session, address, timeout=self.timeout, data=body, headers=headers)
        if not http.successful(status):
            raise http.refusal(status)
        return Receipt(str(status))

    def close(self, *, polite: bool = True) -> None:
        self.session.close()
