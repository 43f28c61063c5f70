"""Acknowledgement tokens: short signed links that fit an SMS.

One tap on the link in an urgent message says "I have seen it". The token is
32 url-safe characters: url-safe base64 (no padding) of 24 bytes

    version (1) | key id (1) | ack id (8) | expiry, unix minutes (4, big-endian)
    | first 10 bytes of HMAC-SHA256(key, everything before)

It says which acknowledgement it is and until when, and holds nothing else:
no case code, no person. Keys: ``ACK_KEYS``, ``id:base64key`` separated by
commas or lines, newest first, with ids 0 to 255 (the format of
``CALLER_KEYS``). The first key signs and any of them verifies, so a new key
can be added ahead of the old one while links signed with it still work.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from datetime import datetime

VERSION = 1
ACK_ID_BYTES = 8
MAC_BYTES = 10
_HEAD = struct.Struct(">BB8sI")  # version, key id, ack id, expiry in unix minutes
TOKEN_LENGTH = (_HEAD.size + MAC_BYTES) * 4 // 3  # 24 bytes: 32 characters, no padding
TOKEN = re.compile(r"[A-Za-z0-9_-]{%d}\Z" % TOKEN_LENGTH)
MIN_SECRET_BYTES = 32
KEY_LINE = re.compile(r"([0-9]{1,3})\s*:\s*([A-Za-z0-9_-]+)=*\Z")


class AckRefused(Exception):
    """A token that does not acknowledge anything; ``reason`` is one of
    malformed, unknown_key, bad_signature, expired."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AckKeys:
    keys: tuple[tuple[int, bytes], ...]  # (key id 0..255, secret), newest first

    @classmethod
    def parse(cls, text: str) -> "AckKeys":
        keys: list[tuple[int, bytes]] = []
        for item in (text or "").replace("\n", ",").split(","):
            item = item.strip()
            if not item or item.startswith("#"):
                continue
            match = KEY_LINE.match(item)
            if not match or int(match.group(1)) > 255:
                raise ValueError("ACK_KEYS: each key is id:base64, the id a number from 0 to 255")
            key_id, encoded = int(match.group(1)), match.group(2)
            try:
                secret = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except binascii.Error:
                raise ValueError("ACK_KEYS: a key is not base64") from None
            if len(secret) < MIN_SECRET_BYTES:
                raise ValueError(f"ACK_KEYS: each key has at least {MIN_SECRET_BYTES} bytes")
            if any(key_id == known for known, _ in keys):
                raise ValueError("ACK_KEYS: two keys with one id")
            keys.append((key_id, secret))
        if not keys:
            raise ValueError("ACK_KEYS: no key")
        return cls(tuple(keys))


def issue(keys: AckKeys, ack_id: bytes, expires_at: datetime) -> str:
    """A token for ``ack_id`` (8 bytes), signed with the newest key, valid
    until ``expires_at`` (to the minute, rounded down)."""
    if len(ack_id) != ACK_ID_BYTES:
        raise ValueError(f"an ack id has {ACK_ID_BYTES} bytes")
    if expires_at.utcoffset() is None:
        raise ValueError("an aware expiry is needed")
    minutes = int(expires_at.timestamp()) // 60  # four bytes hold every minute up to the year 9999
    if minutes < 0:
        raise ValueError("an expiry after 1970")
    key_id, secret = keys.keys[0]
    head = _HEAD.pack(VERSION, key_id, ack_id, minutes)
    return base64.urlsafe_b64encode(head + _mac(secret, head)).decode().rstrip("=")


def verify(keys: AckKeys, token: str, now: datetime) -> bytes:
    """The ack id a token carries, if one of ``keys`` signed it and it has
    not expired at ``now``; ``AckRefused`` otherwise. The signature is
    checked before anything the token says is believed."""
    if now.utcoffset() is None:
        raise ValueError("an aware instant is needed")
    if not isinstance(token, str) or not TOKEN.match(token):
        raise AckRefused("malformed")
    raw = base64.urlsafe_b64decode(token)
    head, mac = raw[:_HEAD.size], raw[_HEAD.size:]
    version, key_id, ack_id, expiry_minutes = _HEAD.unpack(head)
    if version != VERSION:
        raise AckRefused("malformed")
    secret = dict(keys.keys).get(key_id)
    if secret is None:
        raise AckRefused("unknown_key")
    if not hmac.compare_digest(mac, _mac(secret, head)):
        raise AckRefused("bad_signature")
    if now.timestamp() >= expiry_minutes * 60:
        raise AckRefused("expired")
    return ack_id


def _mac(secret: bytes, head: bytes) -> bytes:
    return hmac.new(secret, head, hashlib.sha256).digest()[:MAC_BYTES]
