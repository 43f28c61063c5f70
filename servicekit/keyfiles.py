"""Local key files: the encryption keys of case fields, the audit key and the
caller key, each kept by ``warmi run`` in a file of ``WARMI_HOME`` that only
its owner may read."""
from __future__ import annotations

import os
from pathlib import Path


def create_key_file(path: Path, key: str) -> bool:
    """Write ``key`` as the only line of a new file at ``path`` (mode 600),
    unless the file exists; True if it was made. Never overwrites a key."""
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile: keep theirs
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return True
