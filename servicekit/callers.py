"""Signed callers: who is asking, as the gateway vouches for it.

Every RPC that acts for a person takes the caller first. The gateway builds
it from identity (after the token checked out) and signs it with HMAC-SHA256
under a key that the gateway and the services share and nothing else holds:
a client on the broker that writes its own caller (another organisation,
another role, a president's id) has no key to sign it with, and every
service refuses it. The signature covers every field and the time it was
made; a caller older than ``MAX_AGE_SECONDS`` is refused too, so a captured
one cannot be replayed for long.

Keys: ``CALLER_KEYS`` in configuration, ``id:base64key`` separated by
commas, newest first. The first signs; any of them verifies, so a new key can
be rolled out to the services before the gateway signs with it.
``warmi run`` keeps one in ``$WARMI_HOME/caller.keys``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from nameko.extensions import DependencyProvider

from contracts.errors import Forbidden

MAX_AGE_SECONDS = 300
SKEW_SECONDS = 30
SIGNED_FIELDS = ("user_id", "organization_id", "roles", "supervised_organization_ids", "issued_at", "key_id")


class BadCaller(Forbidden):
    """A caller without a valid signature: refused before anything is read."""


@dataclass(frozen=True)
class CallerKeys:
    keys: tuple[tuple[str, bytes], ...]  # (id, secret), newest first

    @classmethod
    def parse(cls, text: str) -> "CallerKeys":
        keys = []
        for item in (text or "").replace("\n", ",").split(","):
            item = item.strip()
            if not item or item.startswith("#"):
                continue
            key_id, sep, encoded = item.partition(":")
            if not sep:
                raise ValueError("CALLER_KEYS: each key is id:base64")
            secret = base64.urlsafe_b64decode(encoded.encode() + b"=" * (-len(encoded) % 4))
            if len(secret) < 32:
                raise ValueError("CALLER_KEYS: each key has at least 32 bytes")
            keys.append((key_id, secret))
        if not keys:
            raise ValueError("CALLER_KEYS: no key")
        return cls(tuple(keys))

    @classmethod
    def from_settings(cls, value: str | None, file: str | None) -> "CallerKeys":
        if value:
            return cls.parse(value)
        if file and Path(file).exists():
            return cls.parse(Path(file).read_text())
        raise ValueError("no CALLER_KEYS set and no caller key file; run `warmi keys init`")

    def sign(self, caller: dict, now: float | None = None) -> dict:
        key_id, secret = self.keys[0]
        signed = {**caller, "issued_at": int(now if now is not None else time.time()), "key_id": key_id}
        signed["signature"] = _mac(secret, signed)
        return signed

    def verify(self, caller, now: float | None = None) -> dict:
        """The caller if its signature holds and it is fresh; ``BadCaller``
        otherwise. Says nothing about why, to whoever forged it."""
        if not isinstance(caller, dict):
            raise BadCaller("the caller is not signed")
        key_id = caller.get("key_id")
        secret = dict(self.keys).get(key_id) if isinstance(key_id, str) else None
        signature = caller.get("signature")
        issued = caller.get("issued_at")
        if secret is None or not isinstance(signature, str) or not isinstance(issued, int) or isinstance(issued, bool):
            raise BadCaller("the caller is not signed")
        if not hmac.compare_digest(signature, _mac(secret, caller)):
            raise BadCaller("the caller is not signed")
        now = now if now is not None else time.time()
        if issued > now + SKEW_SECONDS or now - issued > MAX_AGE_SECONDS:
            raise BadCaller("the caller is not signed")
        return caller


def _mac(secret: bytes, caller: dict) -> str:
    payload = json.dumps({f: caller.get(f) for f in SIGNED_FIELDS}, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(hmac.new(secret, payload.encode(), hashlib.sha256).digest()).decode().rstrip("=")


def new_key_line() -> str:
    return f"k{int(time.time())}:{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip('=')}"


def ensure_key_file(path: Path) -> bool:
    """Make a key file with one fresh key if there is none; True if made."""
    from servicekit.keyfiles import create_key_file

    return create_key_file(path, new_key_line())


class Callers(DependencyProvider):
    """The caller keys, from ``CALLER_KEYS`` or ``$WARMI_HOME/caller.keys``."""

    def setup(self) -> None:
        from servicekit.config import home

        config = self.container.config
        self.keys = CallerKeys.from_settings(
            config.get("CALLER_KEYS"), config.get("CALLER_KEYS_FILE") or str(home() / "caller.keys")
        )

    def get_dependency(self, worker_ctx) -> CallerKeys:
        return self.keys
