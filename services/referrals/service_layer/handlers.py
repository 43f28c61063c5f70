"""Commands and queries of the provider directory."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from contracts.errors import InvalidInput
from contracts.events import build_event
from servicekit import outbox
from services.referrals.adapters import orm
from services.referrals.domain.model import InvalidProvider, new_provider


def register_provider(session: Session, *, organization_id: str, name: str, kind: str) -> str:
    """Add a provider and announce it (id and kind only) in one transaction."""
    try:
        provider = new_provider(str(uuid.uuid4()), organization_id, name, kind)
    except InvalidProvider as err:
        raise InvalidInput(err.message, {err.field: [err.message]}) from None
    now = datetime.now(timezone.utc)
    session.execute(insert(orm.providers).values(
        id=provider.id, organization_id=organization_id, name=provider.name, kind=provider.kind, active=True,
        created_at=now,
    ))
    outbox.stage(session, orm.outbox, build_event(
        "provider_registered", organization_id=organization_id, occurred_at=now,
        data={"provider_id": provider.id, "kind": provider.kind},
    ), source="referrals")
    session.commit()
    return provider.id


def list_providers(session: Session, organization_id: str) -> list[dict]:
    t = orm.providers
    rows = session.execute(
        select(t.c.id, t.c.name, t.c.kind).where(t.c.organization_id == organization_id, t.c.active.is_(True))
        .order_by(t.c.kind, t.c.name)
    ).all()
    return [{"id": r.id, "name": r.name, "kind": r.kind} for r in rows]
