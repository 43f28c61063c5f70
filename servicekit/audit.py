"""Audit trails chained with HMAC, for every service that keeps one.

An entry belongs to one *chain* of its trail (cases: one chain per case, and
one for operators' commands). Each entry carries a MAC, HMAC-SHA256 over its
content, its place in the chain and the MAC of the entry before it, made with
a secret key that lives outside the database. Whoever can write the database
but does not hold the key cannot alter, insert or reorder an entry without
breaking a MAC. Removing the last entries of a chain and moving its head back
needs no key, so operators keep a signed *anchor* (the heads of the trails,
signed with the key) elsewhere; verifying against it finds any chain that
ends before its anchored head.

Chains are independent: appending to one locks only that chain's head row,
so entries of different chains (reads of different cases of one
organisation) never wait on each other.

Keys
----
``AuditKeys``: the key ring, newest first; the newest signs new entries and
anchors, every entry names its key id, verification uses that entry's key.
A key is written ``<id>:<base64 of 32 random bytes>``.

- ``AuditKeys.configured(config=None)``: from ``config["AUDIT_KEYS"]`` (keys
  separated by commas, newest first) or ``config["AUDIT_KEYS_FILE"]`` (one key
  a line, newest first); else the environment variables ``AUDIT_KEYS`` /
  ``AUDIT_KEYS_FILE``; else the file ``audit.keys`` in ``WARMI_HOME``
  (``key_file()``). Raises ``AuditKeyError`` when there is none.
- ``AuditKeys.from_settings(keys, keys_file)``, ``AuditKeys([...])``.
- ``generate_key()`` -> ``"<id>:<base64>"``; ``new_key_file(path)`` makes a
  file with one key unless it exists (True if made); ``add_key(path, key=None)`` puts
  a (new) newest key first in the file and returns its id. Old keys must stay in
  the ring as long as entries signed with them are kept.

Tables
------
``tables = audit_tables(metadata, prefix="audit", subjects=("case_id", ...))``
gives ``tables.log`` (``<prefix>_log``: id (insertion order), chain,
position (1, 2, ... within the chain), at, actor_id, action, one nullable
String(64) column per subject id, detail (text: field names, counts, never
personal data), key_id, prev_mac, mac; unique (chain, position)) and
``tables.heads`` (``<prefix>_heads``: chain, position, mac). Create them in
the service's migration with the same columns.

Trail
-----
``trail = AuditTrail("identity", tables, keys)``; ``keys`` may be a callable
returning ``AuditKeys`` (resolved on first use).

- ``trail.append(session, chain=..., actor_id=..., action=..., subjects={...},
  detail="", at=None) -> Entry``: in the caller's transaction (the caller
  commits). Locks the chain's head row (``SELECT ... FOR UPDATE`` on
  PostgreSQL; on SQLite it writes first, taking the database's write lock).
- ``sign_entry(keys, trail_name, chain=..., ...) -> (key_id, mac)``: the MAC
  ``append`` writes, for a migration that re-signs older entries.
- ``trail.entries(session, chain) -> list[Entry]``: one chain, in order.
- ``trail.heads(session) -> dict[chain, Head]``.
- ``trail.verify(session, anchored=None) -> list[Problem]``: every entry's
  MAC and link, every chain against its head; with ``anchored`` (the heads of
  this trail in an anchor) also that no anchored entry is gone. Empty list:
  intact. ``trail.verify_and_heads(session)`` returns ``(problems, heads)``.

Anchors
-------
``sign_anchor(keys, {"cases": heads, ...}) -> str`` (one line of JSON, signed
with the newest key); ``read_anchor(keys, text) -> Anchor`` (``.trails``:
``{trail: {chain: Head}}``, ``.at``, ``.key_id``) raises ``AnchorError`` if
the text is not an anchor or its signature does not verify.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from sqlalchemy import Column, Integer, MetaData, String, Table, Text, UniqueConstraint, bindparam, insert, select, update
from sqlalchemy.orm import Session

from servicekit.types import UtcDateTime

GENESIS = "0" * 64
_ENTRY = b"warmi-audit-entry\x00"
_ANCHOR = b"warmi-audit-anchor\x00"
ANCHOR_FORMAT = "warmi-audit-anchor/1"


class AuditKeyError(RuntimeError):
    pass


class AnchorError(ValueError):
    pass


# -- keys ------------------------------------------------------------------------


def generate_key() -> str:
    """A new key, ``<id>:<base64>``; the id says when it was made."""
    key_id = datetime.now(timezone.utc).strftime("%Y%m%d") + "-" + secrets.token_hex(4)
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(32)).decode('ascii')}"


def _parse_key(text: str) -> tuple[str, bytes]:
    key_id, sep, encoded = text.strip().partition(":")
    if not sep or not key_id or len(key_id) > 64:
        raise AuditKeyError("an audit key is not written <id>:<base64 key>")
    try:
        secret = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise AuditKeyError(f"audit key {key_id} is not valid base64") from None
    if len(secret) < 16:
        raise AuditKeyError(f"audit key {key_id} is shorter than 16 bytes")
    return key_id, secret


class AuditKeys:
    """The keys of audit MACs, newest first."""

    def __init__(self, keys: Iterable[str]):
        parsed = [_parse_key(k) for k in keys if k and k.strip()]
        if not parsed:
            raise AuditKeyError("no audit key configured")
        ids = [key_id for key_id, _ in parsed]
        if len(set(ids)) != len(ids):
            raise AuditKeyError("two audit keys share an id")
        self._keys = dict(parsed)
        self.newest_id = ids[0]

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def secret(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    def mac(self, key_id: str, domain: bytes, body: dict) -> str:
        secret = self._keys[key_id]
        message = domain + json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return hmac.new(secret, message, hashlib.sha256).hexdigest()

    @classmethod
    def from_settings(cls, keys: str | None, keys_file: str | os.PathLike | None) -> "AuditKeys":
        if keys:
            return cls(str(keys).split(","))
        if keys_file and Path(keys_file).exists():
            return cls(Path(keys_file).read_text().split())
        raise AuditKeyError(
            "no audit key: set AUDIT_KEYS or AUDIT_KEYS_FILE (`warmi keys init` makes a local key file)"
        )

    @classmethod
    def configured(cls, config: dict | None = None) -> "AuditKeys":
        config = config or {}
        if config.get("AUDIT_KEYS") or config.get("AUDIT_KEYS_FILE"):
            return cls.from_settings(config.get("AUDIT_KEYS"), config.get("AUDIT_KEYS_FILE"))
        return cls.from_settings(os.environ.get("AUDIT_KEYS"), os.environ.get("AUDIT_KEYS_FILE") or key_file())


def key_file() -> Path:
    """The local key file: ``AUDIT_KEYS_FILE``, else ``audit.keys`` in WARMI_HOME."""
    from servicekit.config import home

    return Path(os.environ.get("AUDIT_KEYS_FILE") or home() / "audit.keys")


def new_key_file(path: Path) -> bool:
    """Create ``path`` (mode 600) with one fresh key unless it exists; True if created."""
    from servicekit.keyfiles import create_key_file

    return create_key_file(Path(path), generate_key())


def add_key(path: Path, key: str | None = None) -> str:
    """Put ``key`` (default: a new one) first in ``path``, keeping the others; its id."""
    path = Path(path)
    existing = path.read_text().split() if path.exists() else []
    key = key or generate_key()
    AuditKeys([key, *existing])  # every kept key still parses
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join([key, *existing]) + "\n")
    os.replace(tmp, path)
    return key.split(":", 1)[0]


# -- tables ----------------------------------------------------------------------


@dataclass(frozen=True)
class AuditTables:
    log: Table
    heads: Table
    subjects: tuple[str, ...]


def audit_tables(metadata: MetaData, prefix: str = "audit", subjects: Iterable[str] = ()) -> AuditTables:
    subjects = tuple(subjects)
    log = Table(
        f"{prefix}_log",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("chain", String(64), nullable=False),
        Column("position", Integer, nullable=False),
        Column("at", UtcDateTime(), nullable=False),
        Column("actor_id", String(64), nullable=False),
        Column("action", String(32), nullable=False),
        *(Column(name, String(64), nullable=True) for name in subjects),
        Column("detail", Text, nullable=False, default=""),
        Column("key_id", String(64), nullable=False),
        Column("prev_mac", String(64), nullable=False),
        Column("mac", String(64), nullable=False),
        UniqueConstraint("chain", "position", name=f"uq_{prefix}_log_chain_position"),
    )
    heads = Table(
        f"{prefix}_heads",
        metadata,
        Column("chain", String(64), primary_key=True),
        Column("position", Integer, nullable=False),
        Column("mac", String(64), nullable=False),
    )
    return AuditTables(log, heads, subjects)


# -- entries ---------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    position: int
    mac: str


@dataclass(frozen=True)
class Entry:
    id: int | None
    chain: str
    position: int
    at: datetime
    actor_id: str
    action: str
    subjects: dict
    detail: str
    key_id: str
    prev_mac: str
    mac: str


@dataclass(frozen=True)
class Problem:
    chain: str
    position: int | None
    entry_id: int | None
    reason: str
    subjects: dict | None = None

    def as_dict(self) -> dict:
        return {"chain": self.chain, "position": self.position, "entry_id": self.entry_id, "problem": self.reason,
                **(self.subjects or {})}


def _utc(at: datetime) -> datetime:
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def entry_body(trail: str, *, chain: str, position: int, at: datetime, actor_id: str, action: str,
               subjects: dict, detail: str, key_id: str, prev_mac: str) -> dict:
    """What an entry's MAC covers."""
    return {
        "trail": trail, "chain": chain, "position": position, "at": _utc(at).isoformat(),
        "actor_id": actor_id, "action": action, "subjects": {k: subjects.get(k) for k in sorted(subjects)},
        "detail": detail or "", "key_id": key_id, "prev": prev_mac,
    }


def sign_entry(keys: AuditKeys, trail: str, *, chain: str, position: int, at: datetime, actor_id: str, action: str,
               subjects: dict, detail: str, prev_mac: str) -> tuple[str, str]:
    """``(key_id, mac)`` of an entry, with the newest key (``append`` uses this;
    so can a migration that re-signs entries)."""
    body = entry_body(trail, chain=chain, position=position, at=at, actor_id=actor_id, action=action,
                      subjects=subjects, detail=detail, key_id=keys.newest_id, prev_mac=prev_mac)
    return keys.newest_id, keys.mac(keys.newest_id, _ENTRY, body)


class AuditTrail:
    def __init__(self, name: str, tables: AuditTables, keys: "AuditKeys | Callable[[], AuditKeys]"):
        self.name = name
        self.tables = tables
        self._keys = keys
        heads = tables.heads
        self._head = select(heads.c.position, heads.c.mac).where(heads.c.chain == bindparam("head_chain"))
        self._head_for_update = self._head.with_for_update()
        self._move_head = (
            update(heads).where(heads.c.chain == bindparam("head_chain"))
            .values(position=bindparam("new_position"), mac=bindparam("new_mac"))
        )
        self._insert = insert(tables.log)

    @property
    def keys(self) -> AuditKeys:
        if not isinstance(self._keys, AuditKeys):
            self._keys = self._keys()
        return self._keys

    def _start_chain(self, session: Session, chain: str) -> None:
        heads = self.tables.heads
        values = {"chain": chain, "position": 0, "mac": GENESIS}
        if session.bind.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            session.execute(pg_insert(heads).values(**values).on_conflict_do_nothing(index_elements=["chain"]))
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            session.execute(sqlite_insert(heads).values(**values).on_conflict_do_nothing(index_elements=["chain"]))

    def append(self, session: Session, *, chain: str, actor_id: str, action: str, subjects: dict | None = None,
               detail: str = "", at: datetime | None = None) -> Entry:
        """Add an entry at the end of ``chain`` in the session's transaction."""
        keys = self.keys
        unknown = set(subjects or {}) - set(self.tables.subjects)
        if unknown:
            raise ValueError(f"unknown audit subjects: {sorted(unknown)}")
        subjects = {name: (subjects or {}).get(name) for name in self.tables.subjects}
        at = _utc(at or datetime.now(timezone.utc))
        if session.bind.dialect.name == "postgresql":
            head = session.execute(self._head_for_update, {"head_chain": chain}).first()
            if head is None:
                self._start_chain(session, chain)  # a concurrent first entry waits here, then finds the row
                head = session.execute(self._head_for_update, {"head_chain": chain}).first()
        else:
            # SQLite has no row locks: a write first takes the database's write
            # lock (waiting for another process's), so the head read next is
            # the latest and stays so until this transaction ends
            self._start_chain(session, chain)
            head = session.execute(self._head, {"head_chain": chain}).first()
        position = head.position + 1
        key_id, mac = sign_entry(keys, self.name, chain=chain, position=position, at=at, actor_id=actor_id,
                                 action=action, subjects=subjects, detail=detail, prev_mac=head.mac)
        session.execute(self._insert, {
            "chain": chain, "position": position, "at": at, "actor_id": actor_id, "action": action, **subjects,
            "detail": detail or "", "key_id": key_id, "prev_mac": head.mac, "mac": mac,
        })
        session.execute(self._move_head, {"head_chain": chain, "new_position": position, "new_mac": mac})
        return Entry(None, chain, position, at, actor_id, action, subjects, detail or "", key_id, head.mac, mac)

    def _entry(self, row) -> Entry:
        return Entry(row.id, row.chain, row.position, row.at, row.actor_id, row.action,
                     {name: getattr(row, name) for name in self.tables.subjects}, row.detail or "", row.key_id,
                     row.prev_mac, row.mac)

    def entries(self, session: Session, chain: str) -> list[Entry]:
        log = self.tables.log
        rows = session.execute(select(log).where(log.c.chain == chain).order_by(log.c.position))
        return [self._entry(r) for r in rows]

    def heads(self, session: Session) -> dict[str, Head]:
        heads = self.tables.heads
        return {r.chain: Head(r.position, r.mac) for r in session.execute(select(heads))}

    def verify(self, session: Session, anchored: dict[str, Head] | None = None) -> list[Problem]:
        return self.verify_and_heads(session, anchored)[0]

    def verify_and_heads(self, session: Session, anchored: dict[str, Head] | None = None):
        """``(problems, heads)``. Heads are read first: an entry appended while
        this runs lies beyond its head, and is checked like every other."""
        keys = self.keys
        heads = self.heads(session)
        anchored = anchored or {}
        log = self.tables.log
        problems: list[Problem] = []
        seen: set[str] = set()

        def close(chain: str, last: Entry | None, macs: dict[int, str]) -> None:
            seen.add(chain)
            head = heads.get(chain)
            last_position = last.position if last else 0
            subjects = last.subjects if last else None
            if head is None:
                problems.append(Problem(chain, None, None, "entries without a recorded head", subjects))
            elif head.position > last_position:
                problems.append(Problem(chain, head.position, None,
                                        f"the chain ends at entry {last_position} before its recorded head "
                                        f"({head.position}): entries were removed", subjects))
            elif head.position > 0 and macs.get(head.position) != head.mac:
                problems.append(Problem(chain, head.position, None, "the recorded head is not the chain's entry",
                                        subjects))
            mark = anchored.get(chain)
            if mark is not None and mark.position > 0:
                if mark.position > last_position:
                    problems.append(Problem(
                        chain, mark.position, None,
                        f"the anchor holds entries up to {mark.position} but the chain ends at {last_position}: "
                        "anchored entries were removed", subjects))
                elif macs.get(mark.position) != mark.mac:
                    problems.append(Problem(chain, mark.position, None,
                                            "the entry at the anchored head is not the anchored one", subjects))

        chain = None
        previous_mac = GENESIS
        last: Entry | None = None
        macs: dict[int, str] = {}
        broken = False
        # stream_results: a server-side cursor on PostgreSQL, not every entry in memory
        rows = session.execute(
            select(log).order_by(log.c.chain, log.c.position).execution_options(stream_results=True, yield_per=2000)
        )
        for row in rows:
            entry = self._entry(row)
            if entry.chain != chain:
                if chain is not None:
                    close(chain, last, macs)
                chain, previous_mac, last, macs, broken = entry.chain, GENESIS, None, {}, False
            expected_position = (last.position if last else 0) + 1
            last = entry
            macs[entry.position] = entry.mac  # as stored: the head and the anchor name these
            if broken:
                continue  # one problem a chain: every entry after a break fails too
            if entry.position != expected_position:
                problems.append(Problem(chain, entry.position, entry.id,
                                        f"entries {expected_position} to {entry.position - 1} are missing",
                                        entry.subjects))
                broken = True
            elif entry.prev_mac != previous_mac:
                problems.append(Problem(chain, entry.position, entry.id, "does not follow the entry before it",
                                        entry.subjects))
                broken = True
            elif keys.secret(entry.key_id) is None:
                problems.append(Problem(chain, entry.position, entry.id,
                                        f"signed with audit key {entry.key_id}, which is not configured",
                                        entry.subjects))
                broken = True
            else:
                body = entry_body(self.name, chain=entry.chain, position=entry.position, at=entry.at,
                                  actor_id=entry.actor_id, action=entry.action, subjects=entry.subjects,
                                  detail=entry.detail, key_id=entry.key_id, prev_mac=entry.prev_mac)
                if not hmac.compare_digest(keys.mac(entry.key_id, _ENTRY, body), entry.mac):
                    # "hash-based MAC": HMAC
                    problems.append(Problem(chain, entry.position, entry.id,
                                            "content does not match its hash-based MAC", entry.subjects))
                    broken = True
            previous_mac = entry.mac
        if chain is not None:
            close(chain, last, macs)
        for missing in sorted((set(heads) | set(anchored)) - seen):
            head, mark = heads.get(missing), anchored.get(missing)
            if head is not None and head.position > 0:
                problems.append(Problem(missing, head.position, None,
                                        "a recorded head without entries: the chain was removed"))
            if mark is not None and mark.position > 0:
                problems.append(Problem(missing, mark.position, None,
                                        "the anchor holds this chain but it has no entries: it was removed"))
        return problems, heads


# -- anchors ---------------------------------------------------------------------


@dataclass(frozen=True)
class Anchor:
    at: str
    key_id: str
    trails: dict  # {trail: {chain: Head}}


def sign_anchor(keys: AuditKeys, trails: dict[str, dict[str, Head]], at: datetime | None = None) -> str:
    """The heads of ``trails``, signed with the newest key, as one line of JSON."""
    body = {
        "format": ANCHOR_FORMAT,
        "at": _utc(at or datetime.now(timezone.utc)).isoformat(),
        "key_id": keys.newest_id,
        "trails": {name: {chain: [h.position, h.mac] for chain, h in sorted(heads.items())}
                   for name, heads in sorted(trails.items())},
    }
    body["signature"] = keys.mac(keys.newest_id, _ANCHOR, body)
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def read_anchor(keys: AuditKeys, text: str) -> Anchor:
    try:
        body = json.loads(text)
    except ValueError:
        raise AnchorError("the anchor is not the JSON `warmi audit anchor` prints") from None
    if not isinstance(body, dict) or body.get("format") != ANCHOR_FORMAT:
        raise AnchorError("the anchor is not the JSON `warmi audit anchor` prints")
    signature, key_id = body.pop("signature", None), body.get("key_id")
    if not isinstance(key_id, str) or keys.secret(key_id) is None:
        raise AnchorError(f"the anchor was signed with audit key {key_id!r}, which is not configured")
    if not isinstance(signature, str) or not hmac.compare_digest(keys.mac(key_id, _ANCHOR, body), signature):
        raise AnchorError("the anchor's signature does not verify: it was altered, or signed with another key")
    try:
        trails = {name: {chain: Head(int(p), str(m)) for chain, (p, m) in heads.items()}
                  for name, heads in body["trails"].items()}
    except (AttributeError, TypeError, ValueError):
        raise AnchorError("the anchor's heads are malformed") from None
    return Anchor(str(body.get("at")), key_id, trails)
