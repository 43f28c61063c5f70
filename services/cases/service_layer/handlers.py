"""Commands of the cases service on the case itself; each runs in one unit
of work. Consent is in ``consents``, the plan and its steps in ``plans``.

Every command loads the case, asks the domain whether the caller may do it,
changes the aggregate, recomputes the plan where facts changed, and commits
the case, its audit entry and its events together.
"""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy.exc import IntegrityError

from contracts.errors import Conflict, Forbidden, InvalidInput, NotFound
from services.cases.adapters.crypto import KeyRing, bind
from services.cases.adapters.protocols import load as load_protocol
from services.cases.domain import model
from services.cases.domain.access import Caller, may_open_case
from services.cases.domain.deadlines import AlertPolicy
from services.cases.service_layer.editing import check_version, invalid_input, load_case, save_edit, utcnow
from services.cases.service_layer.plans import replan
from services.cases.service_layer.unit_of_work import UnitOfWork


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


def project_organization(uow: UnitOfWork, event: dict) -> bool:
    """Keep an organisation as identity announces it (its code and time
    zone; the protocol it follows is the cases service's own), once per
    event. The code never changes: survivor codes start with it."""
    if not uow.claim_event(str(event["event_id"]), "project_organization"):
        return False
    data, organization_id = event["data"], str(event["organization_id"])
    existing = uow.organizations.get(organization_id)
    if existing is None:
        try:  # two events of one organisation may be handled side by side
            with uow.session.begin_nested():
                uow.organizations.add(model.Organization(organization_id, data["code"], data["timezone"]))
        except IntegrityError:
            existing = uow.organizations.get(organization_id)
    if existing is not None and existing.timezone != data["timezone"]:
        uow.organizations.set_timezone(organization_id, data["timezone"])
    uow.commit()
    return True


def project_provider(uow: UnitOfWork, event: dict) -> bool:
    """Keep the provider announced by the referrals service, once per event."""
    if not uow.claim_event(str(event["event_id"]), "project_provider"):
        return False
    uow.providers.upsert(str(event["data"]["provider_id"]), str(event["organization_id"]), event["data"]["kind"])
    uow.commit()
    return True


# -- commands ---------------------------------------------------------------------

def open_case(uow: UnitOfWork, keyring: KeyRing, caller: Caller, command: dict, now: datetime | None = None,
              policy: AlertPolicy = AlertPolicy()) -> model.Case:
    """Open a case under a new survivor code, give it its plan, stage ``case_opened``.

    The same ``idempotency_key`` from the same organisation returns the case
    it first opened, so a focal point on a poor connection can safely retry.
    """
    now = now or utcnow()
    bind(uow.session, keyring)  # place and perpetrator relationship are stored encrypted
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
        if command.get("risk_level"):
            case.risk = model.Risk(command["risk_level"])  # told in case_opened itself, not as a change
    except model.InvalidCase as err:
        raise invalid_input(err) from None

    try:
        # the insert itself meets the other retry's row (PostgreSQL waits for
        # it to commit, then refuses the key), not only the commit
        uow.cases.add(case)
        uow.cases.log_status(case)
        replan(uow, case, policy, now, organization=organization, new_case=True)
        uow.audit(case_id=case.id, organization_id=case.organization_id, actor_id=caller.user_id, action="open",
                  fields=[f for f in command if command.get(f) is not None and f != "idempotency_key"], now=now)
        uow.emit(case, "case_opened", {"survivor_code": case.survivor_code, "opened_by": caller.user_id,
                                       "opened_at": now, "risk_level": case.risk.value if case.risk else None},
                 now)
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


def update_case(uow: UnitOfWork, caller: Caller, case_id: str, command: dict, policy: AlertPolicy = AlertPolicy()) -> model.Case:
    now = utcnow()
    case = load_case(uow, caller, case_id, "update")
    version = check_version(case, command.pop("version", None))
    try:
        changed = case.update_profile(command, now)
    except model.InvalidCase as err:
        raise invalid_input(err) from None
    if not changed:
        return case
    if {"incident_at", "minor", "age_group"} & set(changed):
        replan(uow, case, policy, now)
    return save_edit(uow, case, caller, "update", changed, now, version)


def classify_case(uow: UnitOfWork, caller: Caller, case_id: str, command: dict, policy: AlertPolicy = AlertPolicy()) -> model.Case:
    now = utcnow()
    case = load_case(uow, caller, case_id, "classify")
    version = check_version(case, command.get("version"))
    try:
        case.classify(answers=command.get("answers"), incident_type=command.get("incident_type"), now=now,
                      actor_id=caller.user_id)
    except model.InvalidCase as err:
        raise invalid_input(err) from None
    replan(uow, case, policy, now)
    return save_edit(uow, case, caller, "classify", ["incident_type"], now, version)


def set_risk(uow: UnitOfWork, caller: Caller, case_id: str, command: dict, policy: AlertPolicy = AlertPolicy()) -> model.Case:
    now = utcnow()
    case = load_case(uow, caller, case_id, "set_risk")
    version = check_version(case, command.get("version"))
    try:
        case.set_risk(command.get("risk_level"), now, caller.user_id)
    except model.InvalidCase as err:
        raise invalid_input(err) from None
    replan(uow, case, policy, now)
    return save_edit(uow, case, caller, "set_risk", ["risk_level"], now, version)


def assign_case_lead(uow: UnitOfWork, caller: Caller, case_id: str, command: dict) -> model.Case:
    """The gateway checks that the user is a case lead of the organisation."""
    now = utcnow()
    case = load_case(uow, caller, case_id, "assign")
    version = check_version(case, command.get("version"))
    try:
        changed = case.assign_lead(str(command["case_lead_id"]), actor_id=caller.user_id, now=now)
    except model.InvalidCase as err:
        raise invalid_input(err) from None
    if not changed:
        return case
    return save_edit(uow, case, caller, "assign", ["case_lead_id"], now, version)


def exclude_user(uow: UnitOfWork, caller: Caller, case_id: str, command: dict) -> model.Case:
    """Conflict of interest: the user loses every sight of the case."""
    now = utcnow()
    case = load_case(uow, caller, case_id, "exclude")
    version = check_version(case, command.get("version"))
    user = str(command["user_id"])
    if user == caller.user_id:
        raise InvalidInput("you cannot exclude yourself", {"user_id": ["that is you"]})
    uow.cases.exclude(case.id, user, caller.user_id, now)
    fields = case.exclude(user, actor_id=caller.user_id, now=now)
    return save_edit(uow, case, caller, "exclude", fields, now, version)


def approve_closure(uow: UnitOfWork, caller: Caller, case_id: str, *, version: int | None = None) -> model.Case:
    now = utcnow()
    case = load_case(uow, caller, case_id, "approve")
    version = check_version(case, version)
    case.approve_closure(caller.user_id, now)
    case.events.append(("case_updated", {"changed": ["closure_approval"]}))
    return save_edit(uow, case, caller, "approve_closure", ["closure_approved_by"], now, version)


def close_case(uow: UnitOfWork, caller: Caller, case_id: str, command: dict) -> model.Case:
    now = utcnow()
    case = load_case(uow, caller, case_id, "close")
    version = check_version(case, command.get("version"))
    try:
        case.close(reason=command.get("reason"), actor=caller, now=now)
    except model.InvalidCase as err:
        raise invalid_input(err) from None
    for row in uow.plans.steps(case.id):
        if row.status != "open":
            continue
        if row.step_id == "R9":
            uow.plans.complete(row.id, by=caller.user_id, at=now, outcome="done", note_ciphertext=None,
                               approved_by=case.closure_approved_by)
        else:
            uow.plans.cancel(row.id)
    return save_edit(uow, case, caller, "close", ["status"], now, version)


def reopen_case(uow: UnitOfWork, caller: Caller, case_id: str, command: dict, policy: AlertPolicy = AlertPolicy()) -> model.Case:
    """A reopened case gets a fresh clock for the work not yet done."""
    now = utcnow()
    case = load_case(uow, caller, case_id, "reopen")
    version = check_version(case, command.get("version"))
    try:
        case.reopen(reason=command.get("reason") or "", actor_id=caller.user_id, now=now)
    except model.InvalidCase as err:
        raise invalid_input(err) from None
    for row in uow.plans.steps(case.id):
        if row.step_id == "R9" and row.status == "done":
            uow.plans.reopen(row.id, due_at=now, urgent=False, alert_stage=0, next_alert_at=None)
    replan(uow, case, policy, now, clock_from=now)
    return save_edit(uow, case, caller, "reopen", ["status"], now, version)
