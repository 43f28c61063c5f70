"""Encryption at rest for sensitive case fields, with a rotatable key ring.

Keys are Fernet keys, newest first: new writes use the newest, reads try each.
They come from the environment or a file, never from the repository.
"""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class KeyRingError(RuntimeError):
    pass


class KeyRing:
    def __init__(self, keys: list[str]):
        if not keys:
            raise KeyRingError("no encryption key configured for the cases service")
        try:
            self._fernet = MultiFernet([Fernet(k.encode() if isinstance(k, str) else k) for k in keys])
        except (ValueError, TypeError):
            raise KeyRingError("an encryption key is not a valid Fernet key") from None

    def encrypt(self, plaintext: str | None) -> str | None:
        if plaintext is None:
            return None
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str | None) -> str | None:
        if ciphertext is None:
            return None
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise KeyRingError("a field was encrypted with a key this ring does not hold") from None

    def rotate(self, ciphertext: str | None) -> str | None:
        if ciphertext is None:
            return None
        return self._fernet.rotate(ciphertext.encode("ascii")).decode("ascii")

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


def new_key_file(path: Path) -> bool:
    """Create ``path`` with one fresh key unless it exists; True if created."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(Fernet.generate_key().decode() + "\n")
    return True
