"""Cases, organisations and code sequences in SQL."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.cases.adapters import orm
from services.cases.domain.model import Case, CaseStatus, Organization


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite drops the offset; we store UTC
        return value.replace(tzinfo=timezone.utc)
    return value


class SqlCaseRepository:
    def __init__(self, session: Session):
        self.session = session

    def add(self, case: Case) -> None:
        self.session.execute(
            insert(orm.cases).values(
                id=case.id,
                organization_id=case.organization_id,
                survivor_code=case.survivor_code,
                status=case.status.value,
                age_group=case.age_group,
                sex=case.sex,
                incident_at=case.incident_at,
                opened_at=case.opened_at,
                opened_by=case.opened_by,
                narrative_enc=case.narrative_ciphertext,
                survivor_name_enc=case.survivor_name_ciphertext,
                idempotency_key=case.idempotency_key,
                version=1,
            )
        )

    def get(self, case_id: str) -> Case | None:
        row = self.session.execute(select(orm.cases).where(orm.cases.c.id == case_id)).first()
        return self._to_case(row) if row else None

    def by_idempotency_key(self, organization_id: str, key: str) -> Case | None:
        row = self.session.execute(
            select(orm.cases).where(
                orm.cases.c.organization_id == organization_id, orm.cases.c.idempotency_key == key
            )
        ).first()
        return self._to_case(row) if row else None

    @staticmethod
    def _to_case(row) -> Case:
        return Case(
            id=row.id,
            organization_id=row.organization_id,
            survivor_code=row.survivor_code,
            status=CaseStatus(row.status),
            age_group=row.age_group,
            sex=row.sex,
            incident_at=_aware(row.incident_at),
            opened_at=_aware(row.opened_at),
            opened_by=row.opened_by,
            narrative_ciphertext=row.narrative_enc,
            survivor_name_ciphertext=row.survivor_name_enc,
            idempotency_key=row.idempotency_key,
        )


class SqlOrganizationRepository:
    def __init__(self, session: Session):
        self.session = session

    def get(self, organization_id: str) -> Organization | None:
        row = self.session.execute(
            select(orm.organizations).where(orm.organizations.c.id == organization_id)
        ).first()
        return Organization(row.id, row.code, row.timezone) if row else None

    def add(self, organization: Organization) -> None:
        self.session.execute(
            insert(orm.organizations).values(
                id=organization.id,
                code=organization.code,
                timezone=organization.timezone,
                created_at=datetime.now(timezone.utc),
            )
        )

    def next_sequence(self, organization_id: str, year: int) -> int:
        """The next running number for the year. The row lock taken by the
        UPDATE serialises concurrent openings in one organisation."""
        t = orm.survivor_code_sequences
        for _ in range(2):
            result = self.session.execute(
                update(t)
                .where(t.c.organization_id == organization_id, t.c.year == year)
                .values(last_value=t.c.last_value + 1)
                .returning(t.c.last_value)
            ).first()
            if result is not None:
                return result.last_value
            try:
                with self.session.begin_nested():
                    self.session.execute(insert(t).values(organization_id=organization_id, year=year, last_value=1))
                return 1
            except IntegrityError:
                continue  # another opening made the row first; take the UPDATE path
        raise RuntimeError("could not allocate a survivor code")
