"""A case as a committee keeps it: a survivor code, never a name in the clear."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from services.cases.domain.access import Caller
from services.cases.domain.status import CaseStatus


@dataclass(frozen=True)
class Organization:
    id: str
    code: str
    timezone: str


@dataclass
class Case:
    id: str
    organization_id: str
    survivor_code: str
    age_group: str
    sex: str
    opened_at: datetime
    opened_by: str
    incident_at: datetime | None = None
    status: CaseStatus = CaseStatus.OPEN
    # Sensitive text is held here only as ciphertext; the service layer
    # encrypts before it builds a Case and decrypts only for a reader allowed to see it.
    narrative_ciphertext: str | None = None
    survivor_name_ciphertext: str | None = None
    idempotency_key: str | None = None
    excluded_users: frozenset[str] = field(default_factory=frozenset)


class InvalidCase(ValueError):
    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name
        self.message = message


def survivor_code(org_code: str, year: int, sequence: int) -> str:
    """``CEC-2026-0042``: organisation, year of opening, running number."""
    return f"{org_code}-{year}-{sequence:04d}"


def open_case(
    *,
    organization: Organization,
    caller: Caller,
    code: str,
    now: datetime,
    age_group: str,
    sex: str,
    incident_at: datetime | None,
    narrative_ciphertext: str | None,
    survivor_name_ciphertext: str | None,
    idempotency_key: str | None,
) -> Case:
    if incident_at is not None and incident_at > now:
        raise InvalidCase("incident_at", "the incident cannot be in the future")
    return Case(
        id=str(uuid.uuid4()),
        organization_id=organization.id,
        survivor_code=code,
        age_group=age_group,
        sex=sex,
        opened_at=now,
        opened_by=caller.user_id,
        incident_at=incident_at,
        narrative_ciphertext=narrative_ciphertext,
        survivor_name_ciphertext=survivor_name_ciphertext,
        idempotency_key=idempotency_key,
    )
