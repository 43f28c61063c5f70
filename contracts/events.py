"""The event catalogue: name, version, schema and example of every event.

Events carry ids, codes, enums and timestamps; never narrative, names, phone
numbers or addresses, nor free text of any kind, nor anything that tells the
incident type or the survivor's age: a plan step travels as its opaque
reference (``step_ref``) and the role it is for, never as the protocol's step
id (R3 exists only after rape or sexual assault, M1 only for a minor). A
schema here is the contract: producers dump through it, consumers load
through it, and the catalogue test checks every example.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from contracts.envelope import EnvelopeSchema, new_event_id, utcnow

PURPOSES = ("case_management", "referral", "aggregate_reporting")
ROLES = ("focal_point", "case_lead", "president", "supervisor")
RISK_LEVELS = ("low", "medium", "high")
# why a closed case was reopened: a code, never the words of whoever reopened it
REOPEN_REASONS = ("new_incident", "survivor_request", "safety_concern", "plan_incomplete", "other")
# what part of a case changed: groups, not field names (a change of "minor"
# would say that the survivor's age crossed 18; of "excluded_users", that a
# member is suspected)
CHANGES = ("profile", "incident", "team", "plan", "closure_approval")
# a step's opaque reference (services.cases: plan_steps.ref)
STEP_REF = validate.Regexp(r"[0-9a-f]{16}\Z")


class _Data(Schema):
    class Meta:
        unknown = RAISE


class CaseOpenedData(_Data):
    survivor_code = fields.String(required=True)
    opened_by = fields.UUID(required=True)
    opened_at = fields.AwareDateTime(required=True)
    # the case's risk level as it was opened (null: not assessed; an
    # assessment after opening is a risk_changed); events staged before the
    # field existed load with null
    risk_level = fields.String(allow_none=True, load_default=None, validate=validate.OneOf(RISK_LEVELS))


class CaseUpdatedData(_Data):
    changed = fields.List(fields.String(validate=validate.OneOf(CHANGES)), required=True,
                          validate=validate.Length(min=1, max=len(CHANGES)))


class CaseClassifiedData(_Data):
    # the incident type stays in the case: per organisation it would identify
    classified_by = fields.UUID(required=True)


class RiskChangedData(_Data):
    risk_level = fields.String(required=True, validate=validate.OneOf(RISK_LEVELS))
    changed_by = fields.UUID(required=True)


class CaseLeadAssignedData(_Data):
    """The case's lead changed: who leads it now (null: nobody, as when the
    lead was excluded from the case) and who decided it."""

    case_lead_id = fields.UUID(required=True, allow_none=True)
    assigned_by = fields.UUID(required=True)


class ConsentRecordedData(_Data):
    consent_id = fields.UUID(required=True)
    purpose = fields.String(required=True, validate=validate.OneOf(PURPOSES))
    provider_id = fields.UUID(allow_none=True, load_default=None)
    recorded_by = fields.UUID(required=True)


class ConsentWithdrawnData(_Data):
    # no list of the steps it cancelled: whether the medical referral was among
    # them would tell rape or sexual assault
    consent_id = fields.UUID(required=True)
    purpose = fields.String(required=True, validate=validate.OneOf(PURPOSES))
    withdrawn_by = fields.UUID(required=True)


class StepCompletedData(_Data):
    step_ref = fields.String(required=True, validate=STEP_REF)
    responsible = fields.String(required=True, validate=validate.OneOf(ROLES))
    completed_by = fields.UUID(required=True)
    completed_at = fields.AwareDateTime(required=True)
    outcome = fields.String(required=True, validate=validate.OneOf(["done", "declined"]))


class StepAlertData(_Data):
    """A plan step falls due: its reference, when, and the one role it is for
    (the first the protocol names: a pair of roles would single out M1)."""

    step_ref = fields.String(required=True, validate=STEP_REF)
    due_at = fields.AwareDateTime(required=True)
    responsible = fields.String(required=True, validate=validate.OneOf(ROLES))


class StepEscalatedData(StepAlertData):
    rung = fields.String(required=True, validate=validate.OneOf(["president", "supervisor"]))


class CaseClosedData(_Data):
    closed_by = fields.UUID(required=True)
    reason = fields.String(required=True, validate=validate.OneOf(["survivor_agreed", "lost_contact"]))


class CaseReopenedData(_Data):
    reopened_by = fields.UUID(required=True)
    reason = fields.String(required=True, validate=validate.OneOf(REOPEN_REASONS))


class ProviderRegisteredData(_Data):
    provider_id = fields.UUID(required=True)
    kind = fields.String(required=True)


@dataclass(frozen=True)
class EventType:
    name: str
    version: int
    source: str
    schema: type[Schema]
    example: dict
    # "<service>.<handler method>" of every consumer. Each one's queue is
    # declared before anything is published, so an event waits for a consumer
    # that has never run; a consumer whose handler is still to be written
    # (notification rules, referrals) finds every event since its queue began.
    consumers: tuple[str, ...] = ()


# Unless said otherwise, the notifications service consumes an event of a case:
# it tells people about the case's life and its plan.
_NOTIFY = "notifications.handle_{}"


_ORG = "0c9a3c1e-5f0b-4f7e-8d3a-6b2e1f4c9d70"
_CASE = "5e1d7c2a-9b3f-4e68-a0d4-c7f2b8e91a36"
_USER = "a3f9e2c1-7b4d-4c8e-9f1a-2d6b5e0c8f47"
_AT = "2026-11-20T14:05:00+00:00"
_STEP = "9c41e07a5b2d8f36"


def _event(name: str, schema: type[Schema], data: dict, consumers: tuple[str, ...] | None = None, *,
           version: int = 1) -> EventType:
    return EventType(
        name=name, version=version, source="cases", schema=schema,
        consumers=(_NOTIFY.format(name),) if consumers is None else consumers,
        example={
            "event_id": "7f2b6a9e-3c1d-4a57-9b8e-2d4f6a1c0e93", "type": name, "version": version,
            "occurred_at": _AT, "organization_id": _ORG, "case_id": _CASE, "data": data,
        },
    )


CATALOGUE: dict[str, EventType] = {
    e.name: e
    for e in (
        _event("case_opened", CaseOpenedData, {"survivor_code": "CEC-2026-0001", "opened_by": _USER, "opened_at": _AT,
                                               "risk_level": None}),
        # version 2: change groups instead of field names; no step ids, no
        # list of cancelled steps, step references and one role; reopening codes
        _event("case_updated", CaseUpdatedData, {"changed": ["incident"]}, version=2),
        _event("case_classified", CaseClassifiedData, {"classified_by": _USER}),
        _event("risk_changed", RiskChangedData, {"risk_level": "high", "changed_by": _USER}),
        _event("case_lead_assigned", CaseLeadAssignedData, {
            "case_lead_id": "b7e4d2a9-1c6f-4a38-8e5b-0f9c3d7a2e61", "assigned_by": _USER}),
        _event("consent_recorded", ConsentRecordedData, {
            "consent_id": "d1c8e0a4-2b7f-4e5a-9c3d-6f1b2a8e7c90", "purpose": "referral",
            "provider_id": "e4b2c9d1-8a3f-4b6e-a1c7-5d9f0e2b3a84", "recorded_by": _USER},
            ("referrals.handle_consent_recorded",)),
        _event("consent_withdrawn", ConsentWithdrawnData, {
            "consent_id": "d1c8e0a4-2b7f-4e5a-9c3d-6f1b2a8e7c90", "purpose": "referral", "withdrawn_by": _USER},
            ("referrals.handle_consent_withdrawn",), version=2),
        _event("step_completed", StepCompletedData, {
            "step_ref": _STEP, "responsible": "focal_point", "completed_by": _USER, "completed_at": _AT,
            "outcome": "done"}, version=2),
        _event("step_due_soon", StepAlertData, {"step_ref": _STEP, "due_at": _AT, "responsible": "case_lead"},
               version=2),
        _event("step_overdue", StepAlertData, {"step_ref": _STEP, "due_at": _AT, "responsible": "case_lead"},
               version=2),
        _event("step_escalated", StepEscalatedData, {
            "step_ref": _STEP, "due_at": _AT, "responsible": "case_lead", "rung": "president"}, version=2),
        _event("case_closed", CaseClosedData, {"closed_by": _USER, "reason": "survivor_agreed"},
               (_NOTIFY.format("case_closed"), "referrals.handle_case_closed")),
        _event("case_reopened", CaseReopenedData, {"reopened_by": _USER, "reason": "new_incident"}, version=2),
        EventType(
            name="provider_registered", version=1, source="referrals", schema=ProviderRegisteredData,
            consumers=("cases.handle_provider_registered",),
            example={
                "event_id": "3b9e1f7a-6c2d-4e80-b5a1-9d4c7e2f0a65", "type": "provider_registered", "version": 1,
                "occurred_at": _AT, "organization_id": _ORG, "case_id": None,
                "data": {"provider_id": "e4b2c9d1-8a3f-4b6e-a1c7-5d9f0e2b3a84", "kind": "cem"},
            },
        ),
    )
}


class UnknownEvent(ValueError):
    pass


def build_event(
    type_: str,
    *,
    organization_id: str,
    data: dict,
    case_id: str | None = None,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """Validate ``data`` against the catalogue and wrap it in an envelope.

    Returns the JSON-ready dict that goes into the outbox and onto the wire.
    """
    event_type = CATALOGUE.get(type_)
    if event_type is None:
        raise UnknownEvent(type_)
    schema = _schema(type_)
    unknown = sorted(set(data) - set(schema.fields))
    if unknown:  # dump would drop them silently; a producer must hear of it
        raise ValidationError({key: ["not part of the event"] for key in unknown})
    payload = schema.dump(data)
    schema.load(payload)  # a producer must not publish what a consumer rejects
    return _ENVELOPE.dump(
        {
            "event_id": new_event_id(),
            "type": type_,
            "version": event_type.version,
            "occurred_at": occurred_at or utcnow(),
            "organization_id": organization_id,
            "case_id": case_id,
            "data": payload,
        }
    )


def build_events(type_: str, items: list[dict]) -> list[dict[str, Any]]:
    """Many events of one type at once, for the deadline sweep.

    ``items``: dicts with organization_id, case_id, occurred_at and data. The
    first is built (and so checked) by ``build_event``; the others must have
    the same data keys and are serialised the same way without another
    schema pass, which is what makes a sweep of thousands affordable.
    """
    if not items:
        return []
    first = items[0]
    events = [build_event(type_, organization_id=first["organization_id"], case_id=first["case_id"],
                          occurred_at=first["occurred_at"], data=first["data"])]
    keys = set(first["data"])
    version = CATALOGUE[type_].version
    for item in items[1:]:
        if set(item["data"]) != keys:
            raise ValidationError({"data": ["every event of a batch has the same fields"]})
        events.append({
            "event_id": new_event_id(),
            "type": type_,
            "version": version,
            "occurred_at": item["occurred_at"].isoformat(),
            "organization_id": str(item["organization_id"]),
            "case_id": str(item["case_id"]),
            "data": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in item["data"].items()},
        })
    return events


def load_event(body: dict, expected_type: str) -> dict[str, Any]:
    """Load an envelope and its data; raises ``ValidationError`` on a bad one."""
    envelope = _ENVELOPE.load(body)
    if envelope["type"] != expected_type:
        raise ValidationError({"type": [f"expected {expected_type}"]})
    event_type = CATALOGUE[expected_type]
    if envelope["version"] != event_type.version:
        raise ValidationError({"version": [f"unsupported version {envelope['version']}"]})
    try:
        envelope["data"] = _schema(expected_type).load(envelope["data"])
    except ValidationError as err:
        raise ValidationError({"data": err.messages}) from None
    return envelope


# Schema instances are costly to make and safe to reuse (they hold no state
# between calls): one of each, made on first use.
_ENVELOPE = EnvelopeSchema()
_SCHEMAS: dict[str, Schema] = {}


def _schema(type_: str) -> Schema:
    schema = _SCHEMAS.get(type_)
    if schema is None:
        schema = _SCHEMAS[type_] = CATALOGUE[type_].schema()
    return schema


# identity's events (organisations and members) join the catalogue
from contracts import identity_events as _identity_events  # noqa: E402

CATALOGUE.update({e.name: e for e in _identity_events.catalogue()})

# the notifications service's own event (its timers' work) joins the catalogue
from contracts import notification_events as _notification_events  # noqa: E402

CATALOGUE.update({e.name: e for e in _notification_events.catalogue()})
