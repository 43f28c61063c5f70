"""What the gateway asks of identity (services/identity), which it hosts in
its process: who a bearer token belongs to, and whether a person or an
organisation named in a request exists. Identity's own code, on identity's
database; the gateway keeps no tables of its own."""
from __future__ import annotations

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from services.identity.domain.model import Principal, TokenPolicy
from services.identity.service_layer import handlers

__all__ = ["Principal", "authenticate", "organization_exists", "member_with_role", "member"]


def authenticate(session: Session | Connection, authorization: str | None,
                 policy: TokenPolicy = TokenPolicy()) -> Principal | None:
    return handlers.authenticate(session, authorization, policy=policy)


def organization_exists(session: Session | Connection, organization_id: str) -> bool:
    return handlers.organization_exists(session, organization_id)


def member_with_role(session: Session | Connection, organization_id: str, user_id: str, role: str) -> bool:
    return handlers.member_of(session, organization_id, user_id, role)


def member(session: Session | Connection, organization_id: str, user_id: str) -> bool:
    return handlers.member_of(session, organization_id, user_id)
