"""Who is calling: organisations, users, roles and bearer tokens.

Tokens are random and shown once; only their SHA-256 is stored."""
from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from contracts.errors import Conflict, InvalidInput
from contracts.rpc import ROLES
from services.gateway.adapters import orm

ORG_CODE = re.compile(r"^[A-Z]{2,6}$")
LOCALES = ("es", "en")


@dataclass(frozen=True)
class Principal:
    user_id: str
    organization_id: str
    roles: tuple[str, ...]
    supervised: tuple[str, ...] = ()
    scope: str = "read_write"  # or "read": a token that may not edit

    def as_caller(self) -> dict:
        return {
            "user_id": self.user_id, "organization_id": self.organization_id, "roles": list(self.roles),
            "supervised_organization_ids": list(self.supervised),
        }


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def authenticate(session: Session | Connection, authorization: str | None) -> Principal | None:
    if not authorization or not authorization.startswith("Bearer "):
        return None
    token = authorization[len("Bearer "):].strip()
    if not token or len(token) > 200:
        return None
    # one round trip: the user, with one row per organisation supervised
    rows = session.execute(
        select(orm.users.c.id, orm.users.c.organization_id, orm.users.c.roles, orm.supervisions.c.organization_id)
        .join(orm.api_tokens, orm.api_tokens.c.user_id == orm.users.c.id)
        .outerjoin(orm.supervisions, orm.supervisions.c.user_id == orm.users.c.id)
        .where(orm.api_tokens.c.token_hash == hash_token(token), orm.api_tokens.c.revoked_at.is_(None))
    ).all()
    if not rows:
        return None
    user_id, organization_id, roles, _ = rows[0]
    supervised = sorted(row[3] for row in rows if row[3] is not None)
    return Principal(user_id, organization_id, tuple(r for r in roles.split(",") if r), tuple(supervised))


def member_with_role(session: Session, organization_id: str, user_id: str, role: str) -> bool:
    row = session.execute(
        select(orm.users.c.roles).where(orm.users.c.id == user_id, orm.users.c.organization_id == organization_id)
    ).first()
    return row is not None and role in row.roles.split(",")


def member(session: Session, organization_id: str, user_id: str) -> bool:
    return session.execute(
        select(orm.users.c.id).where(orm.users.c.id == user_id, orm.users.c.organization_id == organization_id)
    ).first() is not None


def organization_by_code(session: Session, code: str) -> str | None:
    return session.execute(select(orm.organizations.c.id).where(orm.organizations.c.code == code)).scalar()


def add_supervision(session: Session, user_id: str, organization_id: str) -> None:
    session.execute(insert(orm.supervisions).values(user_id=user_id, organization_id=organization_id))


def organization_exists(session: Session, organization_id: str) -> bool:
    return session.execute(select(orm.organizations.c.id).where(orm.organizations.c.id == organization_id)).first() is not None


def create_organization(session: Session, *, code: str, name: str, timezone_name: str, locale: str) -> str:
    errors = {}
    if not ORG_CODE.match(code or ""):
        errors["code"] = ["two to six capital letters, e.g. CEC"]
    if not name or len(name) > 200:
        errors["name"] = ["required, at most 200 characters"]
    try:
        ZoneInfo(timezone_name)
    except Exception:
        errors["timezone"] = ["unknown time zone"]
    if locale not in LOCALES:
        errors["locale"] = [f"one of {', '.join(LOCALES)}"]
    if errors:
        raise InvalidInput("the organisation is not valid", errors)
    if session.execute(select(orm.organizations.c.id).where(orm.organizations.c.code == code)).first():
        raise Conflict("an organisation with this code exists", {"code": ["already used"]})
    organization_id = str(uuid.uuid4())
    session.execute(
        insert(orm.organizations).values(
            id=organization_id, code=code, name=name, timezone=timezone_name, locale=locale,
            created_at=datetime.now(timezone.utc),
        )
    )
    return organization_id


def create_user(session: Session, *, organization_id: str, display_name: str, roles: list[str]) -> tuple[str, str]:
    """Create a user with a fresh token; returns (user_id, token)."""
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        raise InvalidInput("unknown role", {"roles": [f"each one of {', '.join(ROLES)}"]})
    user_id = str(uuid.uuid4())
    now = datetime.now(timezone.utc)
    session.execute(
        insert(orm.users).values(
            id=user_id, organization_id=organization_id, display_name=display_name[:200],
            roles=",".join(sorted(set(roles))), created_at=now,
        )
    )
    token = secrets.token_urlsafe(32)
    session.execute(insert(orm.api_tokens).values(token_hash=hash_token(token), user_id=user_id, created_at=now))
    return user_id, token
