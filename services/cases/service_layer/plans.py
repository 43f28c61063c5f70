"""The plan of a case: recomputing it from the case's facts, and the work
on its steps (completion with an encrypted note, approval)."""
from __future__ import annotations

import secrets
from datetime import datetime

from contracts.errors import Conflict, Forbidden, InvalidInput, NotFound
from services.cases.adapters.crypto import KeyRing, bind
from services.cases.adapters.protocols import load as load_protocol
from services.cases.domain import consent as consents
from services.cases.domain import model
from services.cases.domain.access import Caller, may
from services.cases.domain.deadlines import AlertPolicy, alert_role, first_alert, restage
from services.cases.domain.protocol import CaseFacts, recompute
from services.cases.domain.status import CaseStatus
from services.cases.service_layer.editing import check_version, load_case, save_edit, utcnow
from services.cases.service_layer.unit_of_work import UnitOfWork

# each try reads the step afresh; only a sweep between every read and write fails them all
RESCHEDULE_TRIES = 5


def new_step_ref() -> str:
    """A step's opaque reference: random, so that nothing about it (not its
    order among the case's steps) tells which protocol step it is."""
    return secrets.token_hex(8)


def facts_of(case: model.Case, timezone_name: str, steps: list, case_consents: list, *,
             opened_at: datetime | None = None) -> CaseFacts:
    return CaseFacts(
        opened_at=opened_at or case.opened_at,
        incident_at=case.incident_at,
        incident_type=case.incident_type,
        minor=case.minor,
        risk=case.risk,
        timezone=timezone_name,
        completed={s.step_id: s.completed_at for s in steps if s.status == "done"},
        withdrawn_consents=consents.withdrawn_purposes(case_consents),
    )


def replan(uow: UnitOfWork, case: model.Case, policy: AlertPolicy, now: datetime, *,
           clock_from: datetime | None = None, organization: model.Organization | None = None,
           new_case: bool = False) -> None:
    """Bring the stored plan in line with the case's facts: new due times for
    open steps, new steps that now apply, cancellation of those that no longer do.

    ``new_case``: the case was added in this unit of work, so it has no steps
    and no consents to read yet."""
    if case.status is CaseStatus.CLOSED:
        return
    organization = organization or uow.organizations.get(case.organization_id)
    protocol = load_protocol(case.protocol_id, case.protocol_version)
    steps = [] if new_case else uow.plans.steps(case.id)
    case_consents = [] if new_case else uow.consents.for_case(case.id)
    facts = facts_of(case, organization.timezone, steps, case_consents, opened_at=clock_from)
    stored = {s.step_id: s for s in steps}
    change = recompute(protocol, facts, {k: s.due_at for k, s in stored.items() if s.status == "open"})
    added = []
    for planned in change.keep:
        row = stored.get(planned.step_id)
        if row is None:
            stage, next_at = first_alert(planned.due_at, now, policy)
            added.append(dict(
                case_id=case.id, organization_id=case.organization_id, step_id=planned.step_id, ref=new_step_ref(),
                responsible=protocol.step(planned.step_id).responsible, due_at=planned.due_at,
                urgent=planned.urgent, alert_stage=stage, next_alert_at=next_at,
            ))
        elif row.status == "cancelled":
            stage, next_at = first_alert(planned.due_at, now, policy)
            uow.plans.reopen(row.id, due_at=planned.due_at, urgent=planned.urgent, alert_stage=stage,
                             next_alert_at=next_at)
        elif row.status == "open" and (row.due_at != planned.due_at or row.urgent != planned.urgent):
            _reschedule(uow, row, planned, now, policy)
    uow.plans.add_many(added)
    for step_id in change.cancel:
        uow.plans.cancel(stored[step_id].id)


def _reschedule(uow: UnitOfWork, row, planned, now: datetime, policy: AlertPolicy) -> None:
    """New due time for an open step. The stage was read without a lock: if
    the deadline sweep moved it since, read the step again and restage from
    the alerts it really sent, so none is sent twice and none is taken back."""
    for _ in range(RESCHEDULE_TRIES):
        stage, next_at = restage(row.alert_stage, row.due_at, planned.due_at, now, policy)
        if uow.plans.reschedule(row, due_at=planned.due_at, urgent=planned.urgent, stage=stage,
                                next_alert_at=next_at):
            return
        row = uow.plans.step(row.id)
        if row is None or row.status != "open":
            return  # done or cancelled meanwhile: the case's version check refuses this edit
    raise Conflict("the plan is being swept; try again", {"plan": ["changed meanwhile"]})


def _step_row(uow: UnitOfWork, case: model.Case, step_id: str):
    row = next((s for s in uow.plans.steps(case.id) if s.step_id == step_id), None)
    if row is None:
        raise NotFound("this case's plan has no such step", {"step_id": ["unknown protocol step"]})
    return row


def complete_step(uow: UnitOfWork, keyring: KeyRing, caller: Caller, case_id: str, step_id: str, command: dict,
                  policy: AlertPolicy = AlertPolicy()) -> model.Case:
    """Record who did a step, when, and an encrypted note. A step with an
    approver needs the approval first; a step is done only once."""
    now = utcnow()
    bind(uow.session, keyring)
    case = load_case(uow, caller, case_id, "read")
    try:
        rule = load_protocol(case.protocol_id, case.protocol_version).step(step_id)
    except KeyError:
        raise NotFound("the protocol has no such step", {"step_id": ["unknown protocol step"]}) from None
    if not may("complete_step", caller, case, step_roles=rule.responsible):
        raise Forbidden("this step is not yours to complete")
    if case.status is CaseStatus.CLOSED:
        raise Conflict("the case is closed; reopen it first", {"status": ["closed"]})
    check_version(case, command.get("version"))
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
    case.events.append(("step_completed", {"step_ref": row.ref, "responsible": alert_role(row.responsible),
                                           "completed_by": caller.user_id, "completed_at": now,
                                           "outcome": outcome}))
    return save_edit(uow, case, caller, "complete_step", ["plan." + step_id], now, version)


def approve_step(uow: UnitOfWork, caller: Caller, case_id: str, step_id: str, *,
                 version: int | None = None) -> model.Case:
    now = utcnow()
    case = load_case(uow, caller, case_id, "approve")
    check_version(case, version)
    row = _step_row(uow, case, step_id)
    if row.status != "open":
        raise Conflict(f"this step is {row.status}", {"step_id": [f"already {row.status}"]})
    uow.plans.approve(row.id, by=caller.user_id)
    version = case.version
    case.touch(now)
    case.events.append(("case_updated", {"changed": ["plan"]}))
    return save_edit(uow, case, caller, "approve", ["plan." + step_id], now, version)
