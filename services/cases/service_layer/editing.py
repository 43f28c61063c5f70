"""Loading a case for a command or query (the caller must see it, her role
must allow the operation, a closed case takes no edits) and saving an edit
with its audit entry and events in one transaction."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from contracts.errors import Conflict, Forbidden, InvalidInput, NotFound, Stale
from services.cases.domain import model
from services.cases.domain.access import Caller, may, may_view_case
from services.cases.domain.status import CaseStatus
from services.cases.service_layer.unit_of_work import UnitOfWork


def load_case(uow: UnitOfWork, caller: Caller, case_id: str, operation: str, *, step_roles=()) -> model.Case:
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


def check_version(case: model.Case, expected: int | None) -> int:
    """Every edit names the version it was made on; the save then writes only
    if the case is still at it (``save_edit``), so the check holds atomically."""
    if expected is None:
        raise InvalidInput("say which version of the case you edited", {"version": ["required"]})
    try:
        case.check_version(expected)
    except model.StaleCase as err:
        raise stale(str(err), case.version) from None
    return expected


def stale(message: str, current_version: int | None) -> Stale:
    shown = f"the case is at version {current_version}" if current_version else "changed meanwhile"
    return Stale(message, {"version": [shown]}, current_version)


def invalid_input(err: model.InvalidCase) -> InvalidInput:
    return InvalidInput(err.message, {err.field: [err.message]})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def save_edit(uow: UnitOfWork, case: model.Case, caller: Caller, action: str, fields, now: datetime,
            expected_version: int) -> model.Case:
    try:
        uow.cases.save(case, expected_version)
    except model.StaleCase as err:
        # someone else's edit committed between the read and this write
        uow.rollback()
        current = uow.cases.get(case.id)
        raise stale(str(err), current.version if current else None) from None
    uow.cases.log_status(case)
    uow.audit(case_id=case.id, organization_id=case.organization_id, actor_id=caller.user_id, action=action,
              fields=fields, now=now)
    uow.emit_case_events(case, now)
    uow.commit()
    return case
