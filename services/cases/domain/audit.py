"""The audit trail's hash chain: each entry's hash covers the entry and the
hash before it in its organisation's chain, so an edited, removed or
reordered entry breaks every hash after it."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    case_id: str
    organization_id: str
    actor_id: str
    action: str
    fields: str  # JSON list of field names, never values
    at: datetime

    def canonical(self) -> dict:
        at = self.at if self.at.tzinfo else self.at.replace(tzinfo=timezone.utc)
        return {
            "case_id": self.case_id,
            "organization_id": self.organization_id,
            "actor_id": self.actor_id,
            "action": self.action,
            "fields": self.fields,
            "at": at.astimezone(timezone.utc).isoformat(),
        }


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    body = json.dumps({"prev": prev_hash, **entry.canonical()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Break:
    organization_id: str
    entry_id: int | None
    reason: str


def verify_chain(organization_id: str, rows: list[tuple[int, AuditEntry, str | None, str | None]], head: str | None) -> Break | None:
    """``rows``: (id, entry, prev_hash, hash) in id order. None if intact."""
    previous = GENESIS
    for entry_id, entry, prev_hash, stored in rows:
        if prev_hash != previous:
            return Break(organization_id, entry_id, "does not follow the entry before it")
        expected = entry_hash(previous, entry)
        if stored != expected:
            return Break(organization_id, entry_id, "content does not match its hash")
        previous = expected
    if (head or GENESIS) != previous:
        return Break(organization_id, None, "the chain ends before its recorded head")
    return None
