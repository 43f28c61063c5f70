"""Signed webhooks: how Warmi signs a delivery, and how a receiver checks it.

Standard library only, so that a receiver can copy this file as it is.

The algorithm (version ``v1``):

1. Warmi POSTs a JSON body whose ``"id"`` is the delivery's id, with the
   headers ``X-Warmi-Delivery: <id>``, ``X-Warmi-Timestamp: <unix seconds>``
   and ``X-Warmi-Signature: v1=<hex>``.
2. ``<hex>`` is the lowercase hex HMAC-SHA256, keyed with the shared secret
   (its UTF-8 bytes), of the timestamp's decimal digits, a dot, and the body
   exactly as received: ``hmac(secret, b"1764000000." + body)``.
3. A receiver accepts a request only if, in this order: the three headers are
   there; the timestamp is within ``tolerance`` seconds (300) of its clock;
   the signature equals, compared in constant time, the HMAC under one of
   its secrets; the body is a JSON object whose ``"id"`` equals
   ``X-Warmi-Delivery`` (the header is not signed, the body is); and it has
   not seen that id before.

Rotating the secret: Warmi signs with the first of its comma-separated
``WEBHOOK_SECRET``; a receiver accepts any of its own. Give the receiver the
new secret as well as the old, then put the new one first at Warmi, then
drop the old one on both sides.

A delivery Warmi repeats (it had no answer in time) carries the same id with
a new timestamp and signature. The receiver that refuses it as ``replayed``
already has it, and should answer 2xx all the same, or Warmi keeps trying.

Example, in a receiver::

    from contracts.webhook_signature import WebhookRefused, verify

    seen = set()  # ids of the last tolerance seconds at least; shared by the receiver's workers
    try:
        delivery_id = verify(["new secret", "old secret"], request.headers, request.body, seen=seen)
    except WebhookRefused as refused:
        return (200 if refused.reason == "replayed" else 401), refused.reason
    handle(json.loads(request.body))
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Iterable, Mapping, MutableSet

VERSION = "v1"
DELIVERY = "X-Warmi-Delivery"
TIMESTAMP = "X-Warmi-Timestamp"
SIGNATURE = "X-Warmi-Signature"
TOLERANCE = 300


class WebhookRefused(Exception):
    """The request is not a genuine, fresh, first delivery from Warmi.
    ``reason``: missing-header, bad-timestamp, stale, bad-signature,
    bad-body (not a JSON object), other-delivery (the body's id is not the
    header's) or replayed."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Warmi-Signature`` value of ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"{VERSION}={digest.hexdigest()}"


def secrets_of(setting: str | Iterable[str]) -> list[str]:
    """Secrets given as one comma-separated string, or as a list."""
    values = setting.split(",") if isinstance(setting, str) else setting
    return [s.strip() for s in values if s and s.strip()]


def verify(secrets: str | Iterable[str], headers: Mapping[str, str], body: bytes, *,
           now: float | None = None, tolerance: int = TOLERANCE, seen: MutableSet[str] | None = None) -> str:
    """The delivery id of a genuine request (see the module's docstring),
    which is then added to ``seen``. Raises ``WebhookRefused`` otherwise.
    Header names are matched in any case."""
    by_name = {name.lower(): value for name, value in headers.items()}
    delivery_id, stamp, signature = (by_name.get(n.lower()) for n in (DELIVERY, TIMESTAMP, SIGNATURE))
    if not (delivery_id and stamp and signature):
        raise WebhookRefused("missing-header")
    if not (stamp.isascii() and stamp.isdigit()):
        raise WebhookRefused("bad-timestamp")
    timestamp = int(stamp)
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise WebhookRefused("stale")
    matches = [hmac.compare_digest(sign(s, timestamp, body).encode(), signature.encode("utf-8", "replace"))
               for s in secrets_of(secrets)]
    if not any(matches):
        raise WebhookRefused("bad-signature")
    try:
        payload = json.loads(body)
    except ValueError:
        raise WebhookRefused("bad-body") from None
    if not isinstance(payload, dict):
        raise WebhookRefused("bad-body")
    if payload.get("id") != delivery_id:
        raise WebhookRefused("other-delivery")
    if seen is not None:
        if delivery_id in seen:
            raise WebhookRefused("replayed")
        seen.add(delivery_id)
    return delivery_id
