"""A case as a committee keeps it: a survivor code, never a name in the clear.

The ``Case`` aggregate guards its own rules (dates, classification, status,
closure) and records what happened as domain events, which the service layer
turns into outbox rows.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from services.cases.domain.access import Caller
from services.cases.domain.classification import (
    CONTEXT_FLAGS, PERPETRATOR_RELATIONSHIPS, PLACES, IncidentType, child_sexual_abuse, classify, delay_bucket,
)
from services.cases.domain.protocol import Risk
from services.cases.domain.status import CaseStatus, TransitionRefused, transition

MINOR_AGE_GROUPS = frozenset({"0-11", "12-17"})
CLOSURE_REASONS = ("survivor_agreed", "lost_contact")
# a reopening gives a code, never free text: its event travels to other services
REOPEN_REASONS = ("new_incident", "survivor_request", "safety_concern", "plan_incomplete", "other")
# what a ``case_updated`` event says changed: a group, never the field (a
# change of "minor" would tell that the survivor's age crossed 18)
CHANGE_GROUPS = {
    "age_group": "profile", "sex": "profile", "minor": "profile", "disability": "profile",
    "incident_at": "incident", "place": "incident", "perpetrator_relationship": "incident",
    "context_flags": "incident",
}


@dataclass(frozen=True)
class Organization:
    id: str
    code: str
    timezone: str
    protocol_id: str = "smp-gbv"
    protocol_version: int = 1


class InvalidCase(ValueError):
    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name
        self.message = message


class StaleCase(ValueError):
    """The caller edited an older version of the case than the one stored."""


@dataclass
class StatusChange:
    from_status: CaseStatus | None
    to_status: CaseStatus
    actor_id: str
    at: datetime
    reason: str | None = None


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
    minor: bool = False
    disability: bool | None = None
    place: str | None = None
    perpetrator_relationship: str | None = None
    context_flags: frozenset[str] = field(default_factory=frozenset)
    incident_type: IncidentType | None = None
    classification_answers: dict | None = None
    delay_bucket: str | None = None
    risk: Risk | None = None
    case_lead_id: str | None = None
    protocol_id: str | None = None
    protocol_version: int | None = None
    closure_approved_by: str | None = None
    opened_month: str | None = None  # YYYY-MM in the organisation's time zone
    reporting_consent: bool = False  # counted in the anonymous statistics
    version: int = 1
    updated_at: datetime | None = None
    # what this unit of work changed, for the service layer
    events: list[tuple[str, dict]] = field(default_factory=list, repr=False)
    status_log: list[StatusChange] = field(default_factory=list, repr=False)

    # -- rules --------------------------------------------------------------
    def check_version(self, expected: int) -> None:
        if expected != self.version:
            raise StaleCase(f"the case changed since version {expected}; it is at version {self.version}")

    def touch(self, now: datetime) -> None:
        self.version += 1
        self.updated_at = now

    def update_profile(self, changes: dict, now: datetime) -> list[str]:
        """Edit the profile and incident facts; returns the fields changed."""
        changed = []
        for name, value in changes.items():
            if name == "incident_at" and value is not None and value > self.opened_at:
                raise InvalidCase("incident_at", "the incident cannot be after the case was reported")
            if name == "place" and value is not None and value not in PLACES:
                raise InvalidCase("place", "unknown place")
            if name == "perpetrator_relationship" and value is not None and value not in PERPETRATOR_RELATIONSHIPS:
                raise InvalidCase("perpetrator_relationship", "unknown relationship")
            if name == "context_flags":
                value = frozenset(value)
                if value - set(CONTEXT_FLAGS):
                    raise InvalidCase("context_flags", "unknown context flag")
            if getattr(self, name) != value:
                setattr(self, name, value)
                changed.append(name)
        if "age_group" in changed or "minor" in changed:
            self.minor = self.minor or self.age_group in MINOR_AGE_GROUPS
        if "incident_at" in changed:
            self.delay_bucket = delay_bucket(self.incident_at, self.opened_at)
        if changed:
            self.touch(now)
            self.events.append(("case_updated", {"changed": sorted({CHANGE_GROUPS[name] for name in changed})}))
        return changed

    def classify(self, *, answers: dict | None, incident_type: str | None, now: datetime, actor_id: str) -> None:
        """One GBVIMS type, from the answers in precedence order or given outright."""
        if (answers is None) == (incident_type is None):
            raise InvalidCase("answers", "give the answers to the classification questions, or the type")
        try:
            if answers is not None:
                new_type = classify(answers)
            else:
                new_type = IncidentType(incident_type)
        except ValueError as err:
            field_name = getattr(err, "field", "incident_type")
            raise InvalidCase(field_name, getattr(err, "message", "unknown incident type")) from None
        self.incident_type = new_type
        self.classification_answers = answers
        self.touch(now)
        self.events.append(("case_classified", {"classified_by": actor_id}))

    @property
    def child_sexual_abuse(self) -> bool:
        return child_sexual_abuse(self.incident_type, self.minor)

    def set_risk(self, risk: str, now: datetime, actor_id: str) -> None:
        try:
            self.risk = Risk(risk)
        except ValueError:
            raise InvalidCase("risk_level", "one of low, medium, high") from None
        self.touch(now)
        self.events.append(("risk_changed", {"risk_level": self.risk.value, "changed_by": actor_id}))

    def assign_lead(self, lead_id: str, *, actor_id: str, now: datetime) -> bool:
        """``lead_id`` leads the case from now on; False, and nothing
        changes, if she already does. A member excluded from the case never
        leads it. Who leads a case travels as ``case_lead_assigned``, for
        the notifications meant for the case lead."""
        if lead_id in self.excluded_users:
            raise InvalidCase("case_lead_id", "this person is excluded from the case")
        if lead_id == self.case_lead_id:
            return False
        self.case_lead_id = lead_id
        self.touch(now)
        self.events.append(("case_updated", {"changed": ["team"]}))
        self.events.append(("case_lead_assigned", {"case_lead_id": lead_id, "assigned_by": actor_id}))
        return True

    def exclude(self, user_id: str, *, actor_id: str, now: datetime) -> list[str]:
        """Conflict of interest: the member loses every sight of the case and,
        if she led it, the lead (the case then has none). Returns the fields
        changed."""
        self.excluded_users = self.excluded_users | {user_id}
        self.touch(now)
        # "team", as for a new case lead: an exclusion would tell that a member is suspected
        self.events.append(("case_updated", {"changed": ["team"]}))
        if self.case_lead_id != user_id:
            return ["excluded_users"]
        self.case_lead_id = None
        self.events.append(("case_lead_assigned", {"case_lead_id": None, "assigned_by": actor_id}))
        return ["excluded_users", "case_lead_id"]

    def move_to(self, target: CaseStatus, *, actor_id: str, now: datetime, reason: str | None = None) -> None:
        try:
            new = transition(self.status, target)
        except TransitionRefused as err:
            raise InvalidCase("status", str(err)) from None
        self.status_log.append(StatusChange(self.status, new, actor_id, now, reason))
        self.status = new
        self.touch(now)

    def start_work(self, actor_id: str, now: datetime) -> bool:
        """The first step done moves an open (or reopened) case into progress."""
        if self.status in (CaseStatus.OPEN, CaseStatus.REOPENED):
            self.move_to(CaseStatus.IN_PROGRESS, actor_id=actor_id, now=now)
            return True
        return False

    def approve_closure(self, supervisor_id: str, now: datetime) -> None:
        self.closure_approved_by = supervisor_id
        self.touch(now)

    def close(self, *, reason: str, actor: Caller, now: datetime) -> None:
        """Closure needs the survivor's agreement or documented loss of
        contact; a high-risk case closes only with a supervisor's approval."""
        if reason not in CLOSURE_REASONS:
            raise InvalidCase("reason", "survivor_agreed or lost_contact")
        if self.risk is Risk.HIGH and not (self.closure_approved_by or "supervisor" in actor.roles):
            raise InvalidCase("approval", "a high-risk case closes only with a supervisor's approval")
        self.move_to(CaseStatus.CLOSED, actor_id=actor.user_id, now=now, reason=reason)
        self.events.append(("case_closed", {"closed_by": actor.user_id, "reason": reason}))

    def reopen(self, *, reason: str, actor_id: str, now: datetime) -> None:
        if reason not in REOPEN_REASONS:
            raise InvalidCase("reason", "one of " + ", ".join(REOPEN_REASONS))
        self.move_to(CaseStatus.REOPENED, actor_id=actor_id, now=now, reason=reason)
        self.closure_approved_by = None
        self.events.append(("case_reopened", {"reopened_by": actor_id, "reason": reason}))


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
    minor: bool = False,
) -> Case:
    if incident_at is not None and incident_at > now:
        raise InvalidCase("incident_at", "the incident cannot be in the future")
    case = Case(
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
        minor=minor or age_group in MINOR_AGE_GROUPS,
        delay_bucket=delay_bucket(incident_at, now),
        protocol_id=organization.protocol_id,
        protocol_version=organization.protocol_version,
        opened_month=now.astimezone(ZoneInfo(organization.timezone)).strftime("%Y-%m"),
    )
    case.status_log.append(StatusChange(None, CaseStatus.OPEN, caller.user_id, now))
    return case
