"""Commands of the cases service; each runs in one unit of work.

Every command loads the case, asks the domain whether the caller may do it,
changes the aggregate, recomputes the plan where facts changed, and commits
the case, its audit entry and its events together.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from sqlalchemy.exc import IntegrityError

from contracts.errors import Conflict, Forbidden, InvalidInput, NotFound
from services.cases.adapters.crypto import KeyRing
from services.cases.adapters.protocols import load as load_protocol
from services.cases.domain import consent as consents
from services.cases.domain import model
from services.cases.domain.access import Caller, may, may_open_case, may_view_case
from services.cases.domain.deadlines import AlertPolicy, alert_time, restage
from services.cases.domain.protocol import CaseFacts, recompute
from services.cases.domain.status import CaseStatus
from services.cases.service_layer.unit_of_work import UnitOfWork


def _now() -> datetime:
    return datetime.now(timezone.utc)


def register_organization(uow: UnitOfWork, *, organization_id: str, code: str, timezone_name: str) -> None:
    try:
        ZoneInfo(timezone_name)
    except Exception:
        raise InvalidInput("unknown time zone", {"timezone": ["unknown time zone"]}) from None
    existing = uow.organizations.get(organization_id)
    if existing is not None:
        if existing.code != code:
            raise Conflict("organisation already registered with another code", {"code": ["differs"]})
        return
    uow.organizations.add(model.Organization(organization_id, code, timezone_name))
    uow.commit()


def assign_protocol(uow: UnitOfWork, *, organization_id: str, protocol_id: str, version: int) -> None:
    """New cases of the organisation follow this protocol; open plans keep theirs."""
    try:
        load_protocol(protocol_id, version)
    except KeyError:
        raise InvalidInput("unknown protocol", {"protocol": [f"no file for {protocol_id} v{version}"]}) from None
    if uow.organizations.get(organization_id) is None:
        raise NotFound("unknown organisation")
    uow.organizations.assign_protocol(organization_id, protocol_id, version)
    uow.commit()


def project_provider(uow: UnitOfWork, event: dict) -> bool:
    """Keep the provider announced by the referrals service, once per event."""
    event_id = str(event["event_id"])
    if uow.handled(event_id, "project_provider"):
        return False
    uow.providers.upsert(str(event["data"]["provider_id"]), str(event["organization_id"]), event["data"]["kind"])
    uow.mark_handled(event_id, "project_provider")
    uow.commit()
    return True


# -- loading a case for a command --------------------------------------------------

def _load(uow: UnitOfWork, caller: Caller, case_id: str, operation: str, *, step_roles=()) -> model.Case:
    try:
        uuid.UUID(str(case_id))
    except ValueError:
        raise NotFound("no such case") from None
    case = uow.cases.get(str(case_id))
    if case is None or not may_view_case(caller, case):
        raise NotFound("no such case")  # a case the caller may not see does not exist for her
    if not may(operation, caller, case, step_roles=step_roles):
        raise Forbidden("your role does not allow this on this case")
    if case.status is CaseStatus.CLOSED and operation not in ("read", "reopen", "audit_trail"):
        raise Conflict("the case is closed; reopen it first", {"status": ["closed"]})
    return case


def _check_version(case: model.Case, expected: int | None) -> int:
    if expected is None:
        raise InvalidInput("say which version of the case you edited", {"version": ["required"]})
    try:
        case.check_version(expected)
    except model.StaleCase as err:
        raise Conflict(str(err), {"version": [f"the case is at version {case.version}"]}) from None
    return expected


def _invalid(err: model.InvalidCase) -> InvalidInput:
    return InvalidInput(err.message, {err.field: [err.message]})


# -- plans ------------------------------------------------------------------------

def facts_of(uow: UnitOfWork, case: model.Case, timezone_name: str, *, opened_at: datetime | None = None) -> CaseFacts:
    steps = uow.plans.steps(case.id)
    return CaseFacts(
        opened_at=opened_at or case.opened_at,
        incident_at=case.incident_at,
        incident_type=case.incident_type,
        minor=case.minor,
        risk=case.risk,
        timezone=timezone_name,
        completed={s.step_id: s.completed_at for s in steps if s.status == "done"},
        withdrawn_consents=consents.withdrawn_purposes(uow.consents.for_case(case.id)),
    )


def replan(uow: UnitOfWork, case: model.Case, policy: AlertPolicy, now: datetime, *, clock_from: datetime | None = None) -> None:
    """Bring the stored plan in line with the case's facts: new due times for
    open steps, new steps that now apply, cancellation of those that no longer do."""
    if case.status is CaseStatus.CLOSED:
        return
    organization = uow.organizations.get(case.organization_id)
    protocol = load_protocol(case.protocol_id, case.protocol_version)
    facts = facts_of(uow, case, organization.timezone, opened_at=clock_from)
    stored = {s.step_id: s for s in uow.plans.steps(case.id)}
    change = recompute(protocol, facts, {k: s.due_at for k, s in stored.items() if s.status == "open"})
    for planned in change.keep:
        row = stored.get(planned.step_id)
        if row is None:
            uow.plans.add(
                case_id=case.id, organization_id=case.organization_id, step_id=planned.step_id,
                responsible=protocol.step(planned.step_id).responsible, due_at=planned.due_at,
                urgent=planned.urgent, next_alert_at=alert_time(0, planned.due_at, policy),
            )
        elif row.status == "cancelled":
            uow.plans.reopen(row.id, due_at=planned.due_at, urgent=planned.urgent,
                             next_alert_at=alert_time(0, planned.due_at, policy))
        elif row.status == "open" and (row.due_at != planned.due_at or row.urgent != planned.urgent):
            stage, next_at = restage(row.alert_stage, row.due_at, planned.due_at, now, policy)
            uow.plans.reschedule(row.id, due_at=planned.due_at, urgent=planned.urgent, stage=stage,
                                 next_alert_at=next_at)
    for step_id in change.cancel:
        uow.plans.cancel(stored[step_id].id)


# -- commands ---------------------------------------------------------------------

def open_case(uow: UnitOfWork, keyring: KeyRing, caller: Caller, command: dict, now: datetime | None = None,
              policy: AlertPolicy = AlertPolicy()) -> model.Case:
    """Open a case under a new survivor code, give it its plan, stage ``case_opened``.

    The same ``idempotency_key`` from the same organisation returns the case
    it first opened, so a focal point on a poor connection can safely retry.
    """
    now = now or _now()
    if not may_open_case(caller):
        raise Forbidden("this role cannot open cases")
    organization_id = str(command.get("organization_id") or caller.organization_id)
    if organization_id != caller.organization_id:
        raise Forbidden("you can only open cases in your own organisation")
    organization = uow.organizations.get(organization_id)
    if organization is None:
        raise InvalidInput("unknown organisation", {"organization_id": ["unknown organisation"]})

    key = command.get("idempotency_key")
    if key:
        earlier = uow.cases.by_idempotency_key(organization_id, key)
        if earlier is not None:
            return _same_request(earlier, caller)

    year = now.astimezone(ZoneInfo(organization.timezone)).year
    code = model.survivor_code(organization.code, year, uow.organizations.next_sequence(organization.id, year))
    try:
        case = model.open_case(
            organization=organization, caller=caller, code=code, now=now,
            age_group=command["age_group"], sex=command.get("sex") or "unknown",
            incident_at=command.get("incident_at"),
            narrative_ciphertext=keyring.encrypt(command.get("narrative")),
            survivor_name_ciphertext=keyring.encrypt(command.get("survivor_name")),
            idempotency_key=key, minor=bool(command.get("minor")),
        )
        profile = {k: command[k] for k in ("disability", "place", "perpetrator_relationship", "context_flags")
                   if command.get(k) is not None}
        if profile:
            case.update_profile(profile, now)
            case.version, case.events = 1, []
    except model.InvalidCase as err:
        raise _invalid(err) from None

    uow.cases.add(case)
    uow.cases.log_status(case)
    replan(uow, case, policy, now)
    uow.audit(case_id=case.id, organization_id=case.organization_id, actor_id=caller.user_id, action="open",
              fields=[f for f in command if command.get(f) is not None and f != "idempotency_key"], now=now)
    uow.emit(case, "case_opened", {"survivor_code": case.survivor_code, "opened_by": caller.user_id,
                                   "opened_at": now}, now)
    try:
        uow.commit()
    except IntegrityError:
        # two retries of one request raced; the first one won
        uow.rollback()
        if key:
            earlier = uow.cases.by_idempotency_key(organization_id, key)
            if earlier is not None:
                return _same_request(earlier, caller)
        raise
    return case


def _same_request(case: model.Case, caller: Caller) -> model.Case:
    if case.opened_by != caller.user_id:
        raise Conflict("this idempotency key was used for another request", {"idempotency_key": ["already used"]})
    return case


def _finish(uow: UnitOfWork, case: model.Case, caller: Caller, action: str, fields, now: datetime,
            expected_version: int) -> model.Case:
    try:
        uow.cases.save(case, expected_version)
    except model.StaleCase as err:
        raise Conflict(str(err), {"version": ["changed meanwhile"]}) from None
    uow.cases.log_status(case)
    uow.audit(case_id=case.id, organization_id=case.organization_id, actor_id=caller.user_id, action=action,
              fields=fields, now=now)
    uow.emit_case_events(case, now)
    uow.commit()
    return case


def update_case(uow: UnitOfWork, caller: Caller, case_id: str, command: dict, policy: AlertPolicy = AlertPolicy()) -> model.Case:
    now = _now()
    case = _load(uow, caller, case_id, "update")
    version = _check_version(case, command.pop("version", None))
    try:
        changed = case.update_profile(command, now)
    except model.InvalidCase as err:
        raise _invalid(err) from None
    if not changed:
        return case
    if {"incident_at", "minor", "age_group"} & set(changed):
        replan(uow, case, policy, now)
    return _finish(uow, case, caller, "update", changed, now, version)


def classify_case(uow: UnitOfWork, caller: Caller, case_id: str, command: dict, policy: AlertPolicy = AlertPolicy()) -> model.Case:
    now = _now()
    case = _load(uow, caller, case_id, "classify")
    version = _check_version(case, command.get("version"))
    try:
        case.classify(answers=command.get("answers"), incident_type=command.get("incident_type"), now=now,
                      actor_id=caller.user_id)
    except model.InvalidCase as err:
        raise _invalid(err) from None
    replan(uow, case, policy, now)
    return _finish(uow, case, caller, "classify", ["incident_type"], now, version)


def set_risk(uow: UnitOfWork, caller: Caller, case_id: str, command: dict, policy: AlertPolicy = AlertPolicy()) -> model.Case:
    now = _now()
    case = _load(uow, caller, case_id, "set_risk")
    version = _check_version(case, command.get("version"))
    try:
        case.set_risk(command.get("risk_level"), now, caller.user_id)
    except model.InvalidCase as err:
        raise _invalid(err) from None
    replan(uow, case, policy, now)
    return _finish(uow, case, caller, "set_risk", ["risk_level"], now, version)


def assign_case_lead(uow: UnitOfWork, caller: Caller, case_id: str, command: dict) -> model.Case:
    """The gateway checks that the user is a case lead of the organisation."""
    now = _now()
    case = _load(uow, caller, case_id, "assign")
    version = _check_version(case, command.get("version"))
    lead = str(command["case_lead_id"])
    if lead in case.excluded_users:
        raise InvalidInput("this person is excluded from the case", {"case_lead_id": ["excluded from the case"]})
    case.case_lead_id = lead
    case.touch(now)
    case.events.append(("case_updated", {"changed": ["case_lead_id"]}))
    return _finish(uow, case, caller, "assign", ["case_lead_id"], now, version)


def exclude_user(uow: UnitOfWork, caller: Caller, case_id: str, command: dict) -> model.Case:
    """Conflict of interest: the user loses every sight of the case."""
    now = _now()
    case = _load(uow, caller, case_id, "exclude")
    version = _check_version(case, command.get("version"))
    user = str(command["user_id"])
    if user == caller.user_id:
        raise InvalidInput("you cannot exclude yourself", {"user_id": ["that is you"]})
    uow.cases.exclude(case.id, user, caller.user_id, now)
    fields = ["excluded_users"]
    if case.case_lead_id == user:
        case.case_lead_id = None
        fields.append("case_lead_id")
    case.touch(now)
    case.events.append(("case_updated", {"changed": fields}))
    return _finish(uow, case, caller, "exclude", fields, now, version)


def record_consent(uow: UnitOfWork, caller: Caller, case_id: str, command: dict,
                   policy: AlertPolicy = AlertPolicy()) -> consents.Consent:
    now = _now()
    case = _load(uow, caller, case_id, "consent")
    provider = command.get("provider_id")
    if provider is not None and not uow.providers.known(case.organization_id, str(provider)):
        raise InvalidInput("unknown provider", {"provider_id": ["not in the organisation's provider directory"]})
    try:
        consent = consents.record(
            case, purpose=command.get("purpose"), given_by=command.get("given_by"), actor_id=caller.user_id, now=now,
            provider_id=str(provider) if provider else None, data_shared=command.get("data_shared"),
            child_assent=command.get("child_assent"),
        )
    except model.InvalidCase as err:
        raise _invalid(err) from None
    uow.consents.add(consent)
    version = _note_consents(uow, case, now)
    replan(uow, case, policy, now)  # consent given again restores work it had cancelled
    case.events.append(("consent_recorded", {"consent_id": consent.id, "purpose": consent.purpose,
                                             "provider_id": consent.provider_id, "recorded_by": caller.user_id}))
    _finish(uow, case, caller, "consent", ["consent." + consent.purpose], now, version)
    return consent


def withdraw_consent(uow: UnitOfWork, caller: Caller, case_id: str, consent_id: str,
                     policy: AlertPolicy = AlertPolicy()) -> consents.Consent:
    """Withdrawing consent cancels the open steps that depended on it."""
    now = _now()
    case = _load(uow, caller, case_id, "consent")
    consent = next((c for c in uow.consents.for_case(case.id) if c.id == str(consent_id)), None)
    if consent is None:
        raise NotFound("no such consent on this case")
    try:
        consent.withdraw(caller.user_id, now)
    except model.InvalidCase as err:
        raise Conflict(err.message, {err.field: [err.message]}) from None
    if not uow.consents.withdraw(consent):
        raise Conflict("this consent was already withdrawn", {"consent_id": ["already withdrawn"]})
    version = _note_consents(uow, case, now)
    before = {s.step_id for s in uow.plans.steps(case.id) if s.status == "open"}
    replan(uow, case, policy, now)
    cancelled = sorted(before - {s.step_id for s in uow.plans.steps(case.id) if s.status == "open"})
    case.events.append(("consent_withdrawn", {"consent_id": consent.id, "purpose": consent.purpose,
                                              "withdrawn_by": caller.user_id, "cancelled_steps": cancelled}))
    _finish(uow, case, caller, "withdraw_consent", ["consent." + consent.purpose], now, version)
    return consent


def _note_consents(uow: UnitOfWork, case: model.Case, now: datetime) -> int:
    """Consent is part of the case: a new version, and statistics count the
    case while a consent to aggregate reporting stands. Returns the version
    the change was made on."""
    version = case.version
    case.reporting_consent = any(
        c.active and c.purpose == "aggregate_reporting" for c in uow.consents.for_case(case.id)
    )
    case.touch(now)
    return version


def _step_row(uow: UnitOfWork, case: model.Case, step_id: str):
    row = next((s for s in uow.plans.steps(case.id) if s.step_id == step_id), None)
    if row is None:
        raise NotFound("this case's plan has no such step", {"step_id": ["unknown protocol step"]})
    return row


def complete_step(uow: UnitOfWork, keyring: KeyRing, caller: Caller, case_id: str, step_id: str, command: dict,
                  policy: AlertPolicy = AlertPolicy()) -> model.Case:
    """Record who did a step, when, and an encrypted note. A step with an
    approver needs the approval first; a step is done only once."""
    now = _now()
    case = _load(uow, caller, case_id, "read")
    try:
        rule = load_protocol(case.protocol_id, case.protocol_version).step(step_id)
    except KeyError:
        raise NotFound("the protocol has no such step", {"step_id": ["unknown protocol step"]}) from None
    if not may("complete_step", caller, case, step_roles=rule.responsible):
        raise Forbidden("this step is not yours to complete")
    if case.status is CaseStatus.CLOSED:
        raise Conflict("the case is closed; reopen it first", {"status": ["closed"]})
    row = _step_row(uow, case, step_id)
    if row.status != "open":
        raise Conflict(f"this step is {row.status}, not open", {"step_id": [f"already {row.status}"]})
    approver = rule.approver or (rule.approver_if_high_risk if case.risk and case.risk.value == "high" else None)
    if approver and not row.approved_by:
        raise InvalidInput("this step needs approval first", {"approval": [f"the {approver} approves this step"]})
    outcome = command.get("outcome") or "done"
    if outcome not in ("done", "declined"):
        raise InvalidInput("done or declined", {"outcome": ["done or declined"]})
    if not uow.plans.complete(row.id, by=caller.user_id, at=now, outcome=outcome,
                              note_ciphertext=keyring.encrypt(command.get("note")), approved_by=row.approved_by):
        raise Conflict("this step was completed meanwhile", {"step_id": ["already done"]})
    version = case.version
    if not case.start_work(caller.user_id, now):
        case.touch(now)
    replan(uow, case, policy, now)
    case.events.append(("step_completed", {"step_id": step_id, "completed_by": caller.user_id,
                                           "completed_at": now, "outcome": outcome}))
    return _finish(uow, case, caller, "complete_step", ["plan." + step_id], now, version)


def approve_step(uow: UnitOfWork, caller: Caller, case_id: str, step_id: str) -> model.Case:
    now = _now()
    case = _load(uow, caller, case_id, "approve")
    row = _step_row(uow, case, step_id)
    if row.status != "open":
        raise Conflict(f"this step is {row.status}", {"step_id": [f"already {row.status}"]})
    uow.plans.approve(row.id, by=caller.user_id)
    version = case.version
    case.touch(now)
    case.events.append(("case_updated", {"changed": ["plan." + step_id + ".approval"]}))
    return _finish(uow, case, caller, "approve", ["plan." + step_id], now, version)


def approve_closure(uow: UnitOfWork, caller: Caller, case_id: str) -> model.Case:
    now = _now()
    case = _load(uow, caller, case_id, "approve")
    version = case.version
    case.approve_closure(caller.user_id, now)
    case.events.append(("case_updated", {"changed": ["closure_approval"]}))
    return _finish(uow, case, caller, "approve_closure", ["closure_approved_by"], now, version)


def close_case(uow: UnitOfWork, caller: Caller, case_id: str, command: dict) -> model.Case:
    now = _now()
    case = _load(uow, caller, case_id, "close")
    version = _check_version(case, command.get("version"))
    try:
        case.close(reason=command.get("reason"), actor=caller, now=now)
    except model.InvalidCase as err:
        raise _invalid(err) from None
    for row in uow.plans.steps(case.id):
        if row.status != "open":
            continue
        if row.step_id == "R9":
            uow.plans.complete(row.id, by=caller.user_id, at=now, outcome="done", note_ciphertext=None,
                               approved_by=case.closure_approved_by)
        else:
            uow.plans.cancel(row.id)
    return _finish(uow, case, caller, "close", ["status"], now, version)


def reopen_case(uow: UnitOfWork, caller: Caller, case_id: str, command: dict, policy: AlertPolicy = AlertPolicy()) -> model.Case:
    """A reopened case gets a fresh clock for the work not yet done."""
    now = _now()
    case = _load(uow, caller, case_id, "reopen")
    version = _check_version(case, command.get("version"))
    try:
        case.reopen(reason=command.get("reason") or "", actor_id=caller.user_id, now=now)
    except model.InvalidCase as err:
        raise _invalid(err) from None
    for row in uow.plans.steps(case.id):
        if row.step_id == "R9" and row.status == "done":
            uow.plans.reopen(row.id, due_at=now, urgent=False, next_alert_at=None)
    replan(uow, case, policy, now, clock_from=now)
    return _finish(uow, case, caller, "reopen", ["status"], now, version)
