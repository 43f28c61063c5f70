"""Commands and queries of the cases service; each runs in one unit of work."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from sqlalchemy.exc import IntegrityError

from contracts.errors import Conflict, Forbidden, InvalidInput, NotFound
from contracts.events import build_event
from services.cases.adapters.crypto import KeyRing
from services.cases.domain import model
from services.cases.domain.access import Caller, may_open_case, may_view_case
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


def open_case(uow: UnitOfWork, keyring: KeyRing, caller: Caller, command: dict, now: datetime | None = None) -> model.Case:
    """Open a case under a new survivor code and stage ``case_opened``.

    The same ``idempotency_key`` from the same organisation returns the case
    it first opened, so a focal point on a poor connection can safely retry.
    """
    now = now or datetime.now(timezone.utc)
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
            organization=organization,
            caller=caller,
            code=code,
            now=now,
            age_group=command["age_group"],
            sex=command.get("sex") or "unknown",
            incident_at=command.get("incident_at"),
            narrative_ciphertext=keyring.encrypt(command.get("narrative")),
            survivor_name_ciphertext=keyring.encrypt(command.get("survivor_name")),
            idempotency_key=key,
        )
    except model.InvalidCase as err:
        raise InvalidInput(err.message, {err.field: [err.message]}) from None

    uow.cases.add(case)
    uow.audit(
        case_id=case.id,
        organization_id=case.organization_id,
        actor_id=caller.user_id,
        action="open",
        fields=[f for f in ("age_group", "sex", "incident_at", "narrative", "survivor_name") if command.get(f)],
    )
    uow.publish(
        build_event(
            "case_opened",
            organization_id=case.organization_id,
            case_id=case.id,
            occurred_at=now,
            data={"survivor_code": case.survivor_code, "opened_by": caller.user_id, "opened_at": now},
        )
    )
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


def get_case(uow: UnitOfWork, caller: Caller, case_id: str) -> model.Case:
    try:
        uuid.UUID(str(case_id))
    except ValueError:
        raise NotFound("no such case") from None
    case = uow.cases.get(str(case_id))
    if case is None or not may_view_case(caller, case):
        # a case the caller may not see does not exist for her
        raise NotFound("no such case")
    uow.audit(
        case_id=case.id, organization_id=case.organization_id, actor_id=caller.user_id, action="read", fields=["summary"]
    )
    uow.commit()
    return case
