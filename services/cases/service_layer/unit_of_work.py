"""One unit of work per command: repositories, the outbox and the audit
trail share one transaction."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from sqlalchemy import insert
from sqlalchemy.orm import Session

from servicekit import outbox
from services.cases.adapters import orm
from services.cases.adapters.repository import SqlCaseRepository, SqlOrganizationRepository


class UnitOfWork:
    def __init__(self, session: Session, *, event_headers: dict | None = None):
        self.session = session
        self.cases = SqlCaseRepository(session)
        self.organizations = SqlOrganizationRepository(session)
        self._event_headers = event_headers or {}

    def publish(self, envelope: dict) -> None:
        outbox.stage(self.session, orm.outbox, envelope, source="cases", headers=self._event_headers)

    def audit(self, *, case_id: str, organization_id: str, actor_id: str, action: str, fields=()) -> None:
        self.session.execute(
            insert(orm.audit_log).values(
                case_id=case_id,
                organization_id=organization_id,
                actor_id=actor_id,
                action=action,
                fields=json.dumps(sorted(fields)),
                at=datetime.now(timezone.utc),
            )
        )

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()
