"""Consent per purpose: recording it, withdrawing it, and what follows for
the plan and the statistics."""
from __future__ import annotations

from datetime import datetime

from contracts.errors import Conflict, InvalidInput, NotFound
from services.cases.domain import consent as consents
from services.cases.domain import model
from services.cases.domain.access import Caller
from services.cases.domain.deadlines import AlertPolicy
from services.cases.service_layer.editing import check_version, invalid_input, load_case, save_edit, utcnow
from services.cases.service_layer.plans import replan
from services.cases.service_layer.unit_of_work import UnitOfWork


def record_consent(uow: UnitOfWork, caller: Caller, case_id: str, command: dict,
                   policy: AlertPolicy = AlertPolicy()) -> consents.Consent:
    now = utcnow()
    case = load_case(uow, caller, case_id, "consent")
    check_version(case, command.get("version"))
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
        raise invalid_input(err) from None
    uow.consents.add(consent)
    version = _note_consents(uow, case, now)
    replan(uow, case, policy, now)  # consent given again restores work it had cancelled
    case.events.append(("consent_recorded", {"consent_id": consent.id, "purpose": consent.purpose,
                                             "provider_id": consent.provider_id, "recorded_by": caller.user_id}))
    save_edit(uow, case, caller, "consent", ["consent." + consent.purpose], now, version)
    return consent


def withdraw_consent(uow: UnitOfWork, caller: Caller, case_id: str, consent_id: str,
                     policy: AlertPolicy = AlertPolicy(), *, version: int | None = None) -> consents.Consent:
    """Withdrawing consent cancels the open steps that depended on it."""
    now = utcnow()
    case = load_case(uow, caller, case_id, "consent")
    check_version(case, version)
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
    replan(uow, case, policy, now)
    # not which steps it cancelled: the medical referral among them would tell the incident type
    case.events.append(("consent_withdrawn", {"consent_id": consent.id, "purpose": consent.purpose,
                                              "withdrawn_by": caller.user_id}))
    save_edit(uow, case, caller, "withdraw_consent", ["consent." + consent.purpose], now, version)
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
