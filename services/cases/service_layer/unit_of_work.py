"""One unit of work per command: repositories, the outbox and the audit
trail share one transaction."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy.orm import Session

from contracts.events import build_event
from servicekit import inbox, outbox
from servicekit.audit import AuditKeys, AuditTrail
from services.cases.adapters import orm
from services.cases.adapters.repository import (
    SqlCaseRepository, SqlConsentRepository, SqlOrganizationRepository, SqlPlanRepository, SqlProviderRepository,
)
from services.cases.domain.audit import OPERATORS, TRAIL, case_chain, field_names
from services.cases.domain.model import Case


def cases_audit_trail(keys: AuditKeys | None = None) -> AuditTrail:
    """The cases trail; without ``keys``, those configured in the environment
    (AUDIT_KEYS, AUDIT_KEYS_FILE or WARMI_HOME/audit.keys), read on first use."""
    return AuditTrail(TRAIL, orm.audit, keys or AuditKeys.configured)


class UnitOfWork:
    def __init__(self, session: Session, *, event_headers: dict | None = None,
                 audit_trail: AuditTrail | None = None):
        self.session = session
        self.audit_trail = audit_trail or cases_audit_trail()
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
        """Append to the case's own chain (servicekit.audit): its head row is
        locked, so entries of one case follow one another, while reads of
        other cases of the organisation go on."""
        self.audit_trail.append(self.session, chain=case_chain(case_id), actor_id=actor_id, action=action,
                                subjects={"case_id": case_id, "organization_id": organization_id},
                                detail=field_names(fields), at=now or datetime.now(timezone.utc))

    def audit_operator(self, *, operator: str, action: str, organization_id: str | None = None, detail: str = "",
                       now: datetime | None = None) -> None:
        """An operator's command, in the operators' chain: who and what, never survivor data."""
        self.audit_trail.append(self.session, chain=OPERATORS, actor_id=operator, action=action,
                                subjects={"organization_id": organization_id}, detail=detail,
                                at=now or datetime.now(timezone.utc))

    def claim_event(self, event_id: str, handler: str) -> bool:
        """Record the event as handled in this unit of work; False for a repeat."""
        return inbox.claim(self.session, orm.processed_events, event_id, handler)

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()
