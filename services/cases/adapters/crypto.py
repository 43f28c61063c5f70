"""Encryption at rest for sensitive case fields, with a rotatable key ring.

Keys are Fernet keys, newest first: new writes use the newest, reads try each.
They come from the environment or a file, never from the repository.

Besides encryption, the ring gives keyed digests (a blind index): a value that
must be looked up in SQL (the users excluded from a case) is stored encrypted
and as an HMAC under a key derived from each Fernet key, so that a query can
ask "is this user excluded" without the database holding the user's id.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

# the label that separates the digest keys from the encryption keys they are derived from
_INDEX_LABEL = b"warmi/cases/blind-index/v1"
# where a unit of work's session carries the ring (see ``bind``)
_SESSION_KEY = "warmi.cases.keyring"


class KeyRingError(RuntimeError):
    pass


class KeyRing:
    def __init__(self, keys: list[str]):
        if not keys:
            raise KeyRingError("no encryption key configured for the cases service")
        try:
            raw = [k.encode() if isinstance(k, str) else k for k in keys]
            self._fernet = MultiFernet([Fernet(k) for k in raw])
            self._index_keys = [hmac.new(base64.urlsafe_b64decode(k), _INDEX_LABEL, hashlib.sha256).digest()
                                for k in raw]
        except (ValueError, TypeError):
            raise KeyRingError("an encryption key is not a valid Fernet key") from None

    def encrypt(self, plaintext: str | None, *, pad_to: int = 0) -> str | None:
        """``pad_to``: pad with spaces to a multiple of this many characters
        first, so that the ciphertext's length does not tell one code (or one
        set of answers) from another. Read such a field with ``padded=True``."""
        if plaintext is None:
            return None
        if pad_to:
            plaintext = plaintext.ljust(-(-max(len(plaintext), 1) // pad_to) * pad_to)
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str | None, *, padded: bool = False) -> str | None:
        if ciphertext is None:
            return None
        try:
            plaintext = self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise KeyRingError("a field was encrypted with a key this ring does not hold") from None
        return plaintext.rstrip(" ") if padded else plaintext

    def rotate(self, ciphertext: str | None) -> str | None:
        if ciphertext is None:
            return None
        return self._fernet.rotate(ciphertext.encode("ascii")).decode("ascii")

    def digest(self, value: str) -> str:
        """The keyed digest of ``value`` under the newest key, for storing."""
        return self._digest(self._index_keys[0], value)

    def digests(self, value: str) -> list[str]:
        """Its digest under every key of the ring, newest first, for looking
        up rows written before the newest key came (until ``rotate``)."""
        return [self._digest(key, value) for key in self._index_keys]

    @staticmethod
    def _digest(key: bytes, value: str) -> str:
        return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()

    @classmethod
    def from_settings(cls, keys: str | None, keys_file: str | None) -> "KeyRing":
        """``keys``: comma-separated, newest first; or ``keys_file``: one key a line."""
        if keys:
            return cls([k.strip() for k in str(keys).split(",") if k.strip()])
        if keys_file and Path(keys_file).exists():
            lines = Path(keys_file).read_text().split()
            return cls([line.strip() for line in lines if line.strip()])
        raise KeyRingError(
            "set CASES_ENCRYPTION_KEYS or CASES_ENCRYPTION_KEYS_FILE (run `warmi keys init` for a local file)"
        )


def bind(session, keyring: KeyRing) -> None:
    """Let the repositories working on ``session`` encrypt and decrypt the
    case's facts and exclusions with ``keyring``."""
    session.info[_SESSION_KEY] = keyring


def bound(session) -> KeyRing:
    """The ring bound to ``session``; refuses rather than read or write a
    sensitive field without it."""
    keyring = session.info.get(_SESSION_KEY)
    if keyring is None:
        raise KeyRingError("this session has no key ring bound to it (services.cases.adapters.crypto.bind)")
    return keyring


def new_key_file(path: Path) -> bool:
    """Create ``path`` with one fresh key unless it exists; True if created."""
    from servicekit.keyfiles import create_key_file

    return create_key_file(path, Fernet.generate_key().decode())
