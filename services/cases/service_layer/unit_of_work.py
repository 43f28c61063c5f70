"""One unit of work per command: repositories, the outbox and the audit
trail share one transaction."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from contracts.events import build_event
from servicekit import inbox, outbox
from services.cases.adapters import orm
from services.cases.adapters.repository import (
    SqlCaseRepository, SqlConsentRepository, SqlOrganizationRepository, SqlPlanRepository, SqlProviderRepository,
)
from services.cases.domain.audit import GENESIS, AuditEntry, entry_hash
from services.cases.domain.model import Case


# statements built once: building one per call (and its cache key) cost more than running it
_HEAD = select(orm.audit_heads.c.last_hash).where(orm.audit_heads.c.organization_id == bindparam("head"))
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_MOVE_HEAD = (
    update(orm.audit_heads).where(orm.audit_heads.c.organization_id == bindparam("head"))
    .values(last_hash=bindparam("new_hash"))
)


class UnitOfWork:
    def __init__(self, session: Session, *, event_headers: dict | None = None):
        self.session = session
        self.cases = SqlCaseRepository(session)
        self.plans = SqlPlanRepository(session)
        self.consents = SqlConsentRepository(session)
        self.organizations = SqlOrganizationRepository(session)
        self.providers = SqlProviderRepository(session)
        self._event_headers = event_headers or {}

    @property
    def dialect(self) -> str:
        return self.session.bind.dialect.name

    def publish(self, envelope: dict) -> None:
        outbox.stage(self.session, orm.outbox, envelope, source="cases", headers=self._event_headers)

    def emit(self, case: Case, event_type: str, data: dict, now: datetime) -> None:
        self.publish(build_event(event_type, organization_id=case.organization_id, case_id=case.id,
                                 occurred_at=now, data=data))

    def emit_case_events(self, case: Case, now: datetime) -> None:
        """The domain events the aggregate recorded, through the outbox."""
        for event_type, data in case.events:
            self.emit(case, event_type, data, now)
        case.events.clear()

    def audit(self, *, case_id: str, organization_id: str, actor_id: str, action: str, fields=(),
              now: datetime | None = None) -> None:
        """Append to the organisation's hash chain. The head row is locked, so
        entries of one organisation are chained one after the other."""
        entry = AuditEntry(case_id, organization_id, actor_id, action, json.dumps(sorted(fields)),
                           now or datetime.now(timezone.utc))
        heads = orm.audit_heads
        query = _HEAD_FOR_UPDATE if self.dialect == "postgresql" else _HEAD
        organization = {"head": organization_id}
        previous = self.session.execute(query, organization).scalar()
        if previous is None:
            try:
                with self.session.begin_nested():
                    self.session.execute(insert(heads).values(organization_id=organization_id, last_hash=GENESIS))
                previous = GENESIS
            except IntegrityError:  # another transaction started the chain: wait for its lock
                previous = self.session.execute(query, organization).scalar()
        digest = entry_hash(previous, entry)
        self.session.execute(insert(orm.audit_log), {
            "case_id": entry.case_id, "organization_id": entry.organization_id, "actor_id": entry.actor_id,
            "action": entry.action, "fields": entry.fields, "at": entry.at, "prev_hash": previous, "hash": digest,
        })
        self.session.execute(_MOVE_HEAD, {"head": organization_id, "new_hash": digest})

    def claim_event(self, event_id: str, handler: str) -> bool:
        """Record the event as handled in this unit of work; False for a repeat."""
        return inbox.claim(self.session, orm.processed_events, event_id, handler)

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()
