"""Identity's audit trail: every operator's command on people, tokens and
organisations, chained with HMAC (servicekit.audit) under the audit key."""
from __future__ import annotations

import getpass
import os

from sqlalchemy.orm import Session

from servicekit.audit import AuditKeys, AuditTrail
from services.identity.adapters import orm

CHAIN = "operators"
TRAIL = AuditTrail("identity", orm.audit, AuditKeys.configured)


def operator() -> str:
    """Who runs this command: ``WARMI_OPERATOR`` or the system user."""
    name = os.environ.get("WARMI_OPERATOR")
    if not name:
        try:
            name = getpass.getuser()
        except Exception:
            name = "unknown"
    return f"operator:{name}"[:64]


def record(session: Session, action: str, *, actor: str | None = None, detail: str = "", **subjects) -> None:
    """In the caller's transaction: the entry and the change commit together."""
    TRAIL.append(session, chain=CHAIN, actor_id=actor or operator(), action=action,
                 subjects={k: (str(v) if v is not None else None) for k, v in subjects.items()}, detail=detail)
