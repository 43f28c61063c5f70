"""Cases, plans, consents, organisations and code sequences in SQL."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from servicekit.database import insert_rows
from services.cases.adapters import cells, orm
from services.cases.adapters.crypto import bound
from services.cases.domain.classification import IncidentType
from services.cases.domain.consent import Consent
from services.cases.domain.model import Case, Organization, StaleCase
from services.cases.domain.protocol import Risk
from services.cases.domain.status import CaseStatus



_CASE_COLUMNS = (
    "id", "organization_id", "survivor_code", "age_group", "sex", "incident_at", "opened_at", "opened_by",
    "idempotency_key", "minor", "disability", "delay_bucket",
    "case_lead_id", "protocol_id", "protocol_version", "closure_approved_by", "version", "updated_at",
    "opened_month", "reporting_consent",
)


# codes and answers are padded before encryption: "processing_plant" or six
# answers would otherwise show in the length of their ciphertext
CODE_PAD, ANSWERS_PAD = 32, 256


def _seal(session: Session, value: str | None, pad: int) -> str | None:
    return None if value is None else bound(session).encrypt(value, pad_to=pad)


def _open(session: Session, ciphertext: str | None) -> str | None:
    return None if ciphertext is None else bound(session).decrypt(ciphertext, padded=True)


def _case_values(session: Session, case: Case) -> dict:
    values = {name: getattr(case, name) for name in _CASE_COLUMNS}
    answers = json.dumps(case.classification_answers, sort_keys=True) if case.classification_answers else None
    values.update(
        status=case.status.value,
        narrative_enc=case.narrative_ciphertext,
        survivor_name_enc=case.survivor_name_ciphertext,
        place_enc=_seal(session, case.place, CODE_PAD),
        perpetrator_relationship_enc=_seal(session, case.perpetrator_relationship, CODE_PAD),
        context_flags=",".join(sorted(case.context_flags)),
        incident_type=case.incident_type.value if case.incident_type else None,
        classification_answers_enc=_seal(session, answers, ANSWERS_PAD),
        risk_level=case.risk.value if case.risk else None,
    )
    return values


@dataclass
class StepRow:
    id: int
    case_id: str
    step_id: str
    ref: str
    responsible: tuple[str, ...]
    due_at: datetime
    urgent: bool
    status: str
    completed_at: datetime | None
    completed_by: str | None
    outcome: str | None
    note_ciphertext: str | None
    approved_by: str | None
    alert_stage: int
    next_alert_at: datetime | None


class SqlCaseRepository:
    """Cases; every write also moves the case between statistics cells."""

    def __init__(self, session: Session):
        self.session = session
        self._cells: dict[str, tuple | None] = {}  # the cell each loaded case counted in

    def add(self, case: Case) -> None:
        # the values as parameters of a statement compiled once, not built into a new one each time
        self.session.execute(insert(orm.cases), _case_values(self.session, case))
        cells.move(self.session, None, cells.key_of(case))
        self._cells[case.id] = cells.key_of(case)

    def save(self, case: Case, expected_version: int) -> None:
        """Write a changed case; refuse if someone else wrote it meanwhile."""
        result = self.session.execute(
            update(orm.cases)
            .where(orm.cases.c.id == case.id, orm.cases.c.version == expected_version)
            .values(**{k: v for k, v in _case_values(self.session, case).items() if k != "id"})
        )
        if result.rowcount != 1:
            raise StaleCase("the case was changed by someone else meanwhile")
        new = cells.key_of(case)
        cells.move(self.session, self._cells.get(case.id), new)
        self._cells[case.id] = new

    def get(self, case_id: str) -> Case | None:
        row = self.session.execute(select(orm.cases).where(orm.cases.c.id == case_id)).first()
        if row is None:
            return None
        case = self._to_case(row)
        self._cells[case.id] = cells.key_of(case)
        return case

    def by_idempotency_key(self, organization_id: str, key: str) -> Case | None:
        row = self.session.execute(
            select(orm.cases).where(
                orm.cases.c.organization_id == organization_id, orm.cases.c.idempotency_key == key
            )
        ).first()
        return self._to_case(row) if row else None

    def page(self, *, where, order, limit: int, offset: int) -> tuple[list[Case], int]:
        total = self.session.execute(select(func.count()).select_from(orm.cases).where(*where)).scalar()
        rows = self.session.execute(select(orm.cases).where(*where).order_by(*order).limit(limit).offset(offset)).all()
        return [self._to_case(r) for r in rows], total

    def _to_case(self, row) -> Case:
        excluded = self.session.execute(
            select(orm.case_exclusions.c.user_id_enc).where(orm.case_exclusions.c.case_id == row.id)
        ).scalars().all()
        answers = _open(self.session, row.classification_answers_enc)
        return Case(
            id=row.id,
            organization_id=row.organization_id,
            survivor_code=row.survivor_code,
            status=CaseStatus(row.status),
            age_group=row.age_group,
            sex=row.sex,
            incident_at=row.incident_at,
            opened_at=row.opened_at,
            opened_by=row.opened_by,
            narrative_ciphertext=row.narrative_enc,
            survivor_name_ciphertext=row.survivor_name_enc,
            idempotency_key=row.idempotency_key,
            excluded_users=frozenset(bound(self.session).decrypt(e) for e in excluded),
            minor=bool(row.minor),
            disability=row.disability,
            place=_open(self.session, row.place_enc),
            perpetrator_relationship=_open(self.session, row.perpetrator_relationship_enc),
            context_flags=frozenset(f for f in (row.context_flags or "").split(",") if f),
            incident_type=IncidentType(row.incident_type) if row.incident_type else None,
            classification_answers=json.loads(answers) if answers else None,
            delay_bucket=row.delay_bucket,
            risk=Risk(row.risk_level) if row.risk_level else None,
            case_lead_id=row.case_lead_id,
            protocol_id=row.protocol_id,
            protocol_version=row.protocol_version,
            closure_approved_by=row.closure_approved_by,
            opened_month=row.opened_month,
            reporting_consent=bool(row.reporting_consent),
            version=row.version,
            updated_at=row.updated_at,
        )

    def exclude(self, case_id: str, user_id: str, by: str, now: datetime) -> None:
        """The user's id encrypted, and its keyed digest to find it by."""
        keyring, t = bound(self.session), orm.case_exclusions
        if self.session.execute(select(t.c.case_id).where(
                t.c.case_id == case_id, t.c.user_digest.in_(keyring.digests(user_id)))).first():
            return  # already excluded (perhaps under an older key)
        try:
            with self.session.begin_nested():
                self.session.execute(insert(t).values(
                    case_id=case_id, user_digest=keyring.digest(user_id), user_id_enc=keyring.encrypt(user_id),
                    excluded_by=by, at=now))
        except IntegrityError:
            pass  # already excluded

    def log_status(self, case: Case) -> None:
        if case.status_log:
            self.session.execute(insert(orm.status_changes), [
                {
                    "case_id": case.id,
                    "from_status": change.from_status.value if change.from_status else None,
                    "to_status": change.to_status.value,
                    "reason": change.reason,
                    "actor_id": change.actor_id,
                    "at": change.at,
                }
                for change in case.status_log
            ])
        case.status_log.clear()

    def status_history(self, case_id: str) -> list:
        t = orm.status_changes
        return self.session.execute(select(t).where(t.c.case_id == case_id).order_by(t.c.id)).all()


class SqlPlanRepository:
    def __init__(self, session: Session):
        self.session = session

    def steps(self, case_id: str) -> list[StepRow]:
        t = orm.plan_steps
        rows = self.session.execute(select(t).where(t.c.case_id == case_id).order_by(t.c.id)).all()
        return [self._step_row(r) for r in rows]

    @staticmethod
    def _step_row(r) -> StepRow:
        return StepRow(
            id=r.id, case_id=r.case_id, step_id=r.step_id, ref=r.ref, responsible=tuple(r.responsible.split(",")),
            due_at=r.due_at, urgent=bool(r.urgent), status=r.status, completed_at=r.completed_at,
            completed_by=r.completed_by, outcome=r.outcome, note_ciphertext=r.note_enc,
            approved_by=r.approved_by, alert_stage=r.alert_stage, next_alert_at=r.next_alert_at,
        )

    def add_many(self, steps: list[dict]) -> None:
        """New open steps in one statement; each dict has case_id,
        organization_id, step_id, ref, responsible, due_at, urgent, alert_stage
        and next_alert_at."""
        insert_rows(self.session, orm.plan_steps,
                    [dict(step, responsible=",".join(step["responsible"]), status="open") for step in steps])

    def step(self, row_id: int) -> StepRow | None:
        """One step as it is now (after a compare-and-set that did not take)."""
        t = orm.plan_steps
        row = self.session.execute(select(t).where(t.c.id == row_id)).first()
        return self._step_row(row) if row else None

    def reschedule(self, row: StepRow, *, due_at: datetime, urgent: bool, stage: int, next_alert_at) -> bool:
        """Move a step's due time and alert stage, only if the deadline sweep
        has not moved its stage since ``row`` was read; False if it had."""
        t = orm.plan_steps
        result = self.session.execute(
            update(t).where(
                t.c.id == row.id, t.c.status == "open", t.c.alert_stage == row.alert_stage,
                t.c.next_alert_at.is_not_distinct_from(row.next_alert_at),
            ).values(due_at=due_at, urgent=urgent, alert_stage=stage, next_alert_at=next_alert_at)
        )
        return result.rowcount == 1

    def reopen(self, row_id: int, *, due_at: datetime, urgent: bool, alert_stage: int, next_alert_at) -> None:
        self.session.execute(
            update(orm.plan_steps).where(orm.plan_steps.c.id == row_id).values(
                status="open", due_at=due_at, urgent=urgent, alert_stage=alert_stage, next_alert_at=next_alert_at,
                completed_at=None, completed_by=None, outcome=None,
            )
        )

    def approve(self, row_id: int, *, by: str) -> None:
        self.session.execute(update(orm.plan_steps).where(orm.plan_steps.c.id == row_id).values(approved_by=by))

    def cancel(self, row_id: int) -> None:
        self.session.execute(
            update(orm.plan_steps).where(orm.plan_steps.c.id == row_id).values(status="cancelled", next_alert_at=None)
        )

    def complete(self, row_id: int, *, by: str, at: datetime, outcome: str, note_ciphertext: str | None,
                 approved_by: str | None) -> bool:
        """Mark a step done; False if it was not open (done twice, or cancelled)."""
        t = orm.plan_steps
        result = self.session.execute(
            update(t).where(t.c.id == row_id, t.c.status == "open").values(
                status="done", completed_by=by, completed_at=at, outcome=outcome, note_enc=note_ciphertext,
                approved_by=approved_by, next_alert_at=None,
            )
        )
        return result.rowcount == 1


class SqlConsentRepository:
    def __init__(self, session: Session):
        self.session = session

    def add(self, consent: Consent) -> None:
        self.session.execute(
            insert(orm.consents).values(
                id=consent.id, case_id=consent.case_id, purpose=consent.purpose, provider_id=consent.provider_id,
                data_shared=",".join(consent.data_shared), given_by=consent.given_by,
                child_assent=consent.child_assent, recorded_by=consent.recorded_by, recorded_at=consent.recorded_at,
            )
        )

    def for_case(self, case_id: str) -> list[Consent]:
        t = orm.consents
        rows = self.session.execute(select(t).where(t.c.case_id == case_id).order_by(t.c.recorded_at, t.c.id)).all()
        return [
            Consent(
                id=r.id, case_id=r.case_id, purpose=r.purpose, given_by=r.given_by, recorded_by=r.recorded_by,
                recorded_at=r.recorded_at, provider_id=r.provider_id,
                data_shared=tuple(d for d in r.data_shared.split(",") if d), child_assent=r.child_assent,
                withdrawn_by=r.withdrawn_by, withdrawn_at=r.withdrawn_at,
            )
            for r in rows
        ]

    def withdraw(self, consent: Consent) -> bool:
        t = orm.consents
        result = self.session.execute(
            update(t).where(t.c.id == consent.id, t.c.withdrawn_at.is_(None)).values(
                withdrawn_by=consent.withdrawn_by, withdrawn_at=consent.withdrawn_at
            )
        )
        return result.rowcount == 1


class SqlOrganizationRepository:
    def __init__(self, session: Session):
        self.session = session

    _BY_ID = select(orm.organizations).where(orm.organizations.c.id == bindparam("organization_id"))

    def get(self, organization_id: str) -> Organization | None:
        row = self.session.execute(self._BY_ID, {"organization_id": organization_id}).first()
        if row is None:
            return None
        return Organization(row.id, row.code, row.timezone, row.protocol_id, row.protocol_version)

    def add(self, organization: Organization) -> None:
        self.session.execute(
            insert(orm.organizations).values(
                id=organization.id,
                code=organization.code,
                timezone=organization.timezone,
                protocol_id=organization.protocol_id,
                protocol_version=organization.protocol_version,
                created_at=datetime.now(timezone.utc),
            )
        )

    def set_timezone(self, organization_id: str, timezone_name: str) -> None:
        self.session.execute(
            update(orm.organizations).where(orm.organizations.c.id == organization_id).values(timezone=timezone_name)
        )

    def assign_protocol(self, organization_id: str, protocol_id: str, version: int) -> None:
        self.session.execute(
            update(orm.organizations).where(orm.organizations.c.id == organization_id).values(
                protocol_id=protocol_id, protocol_version=version
            )
        )

    _NEXT_VALUE = (
        update(orm.survivor_code_sequences)
        .where(orm.survivor_code_sequences.c.organization_id == bindparam("sequence_organization"),
               orm.survivor_code_sequences.c.year == bindparam("sequence_year"))
        .values(last_value=orm.survivor_code_sequences.c.last_value + 1)
        .returning(orm.survivor_code_sequences.c.last_value)
    )

    def next_sequence(self, organization_id: str, year: int) -> int:
        """The next running number for the year. The row lock taken by the
        UPDATE serialises concurrent openings in one organisation."""
        t = orm.survivor_code_sequences
        for _ in range(2):
            result = self.session.execute(
                self._NEXT_VALUE, {"sequence_organization": organization_id, "sequence_year": year}
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


class SqlProviderRepository:
    """The projection of the referrals service's provider directory."""

    def __init__(self, session: Session):
        self.session = session

    def known(self, organization_id: str, provider_id: str) -> bool:
        t = orm.providers
        return self.session.execute(
            select(t.c.id).where(t.c.id == provider_id, t.c.organization_id == organization_id)
        ).first() is not None

    def upsert(self, provider_id: str, organization_id: str, kind: str) -> None:
        t = orm.providers
        updated = self.session.execute(update(t).where(t.c.id == provider_id).values(kind=kind))
        if updated.rowcount == 0:
            self.session.execute(insert(t).values(id=provider_id, organization_id=organization_id, kind=kind))
