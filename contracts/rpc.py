"""Shapes of the RPC calls between the gateway and the services.

Each RPC takes the caller (who is asking, for which organisation, with which
roles) as its first argument: services check access again themselves rather
than trusting that the gateway did (design rule 6).
"""
from __future__ import annotations

from datetime import timezone

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from contracts.errors import InvalidInput

ROLES = ("focal_point", "case_lead", "president", "supervisor", "programme", "operator")
AGE_GROUPS = ("0-11", "12-17", "18-25", "26-40", "41-60", "61+", "unknown")
SEXES = ("female", "male", "other", "unknown")


class Strict(Schema):
    class Meta:
        unknown = RAISE


class CallerSchema(Strict):
    user_id = fields.UUID(required=True)
    organization_id = fields.UUID(required=True)
    roles = fields.List(fields.String(validate=validate.OneOf(ROLES)), required=True)


class OpenCaseSchema(Strict):
    """What a focal point sends to open a case. Narrative and name are optional
    and are encrypted by the cases service before they touch the disk."""

    age_group = fields.String(required=True, validate=validate.OneOf(AGE_GROUPS))
    sex = fields.String(load_default="unknown", validate=validate.OneOf(SEXES))
    incident_at = fields.AwareDateTime(load_default=None, allow_none=True)
    narrative = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=20000)
    )
    survivor_name = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(min=1, max=200)
    )
    organization_id = fields.UUID(load_default=None, allow_none=True)
    idempotency_key = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(min=1, max=100)
    )


class CaseViewSchema(Schema):
    """A case as the API shows it in a list or after opening; no narrative."""

    id = fields.UUID()
    organization_id = fields.UUID()
    survivor_code = fields.String()
    status = fields.String()
    age_group = fields.String()
    sex = fields.String()
    incident_at = fields.AwareDateTime(allow_none=True, default_timezone=timezone.utc)
    opened_at = fields.AwareDateTime(default_timezone=timezone.utc)
    opened_by = fields.UUID()
    has_narrative = fields.Boolean()
    has_survivor_name = fields.Boolean()


class DeliveryViewSchema(Schema):
    channel = fields.String()
    recipient_role = fields.String()
    status = fields.String()
    attempts = fields.Integer()
    sent_at = fields.AwareDateTime(allow_none=True, default_timezone=timezone.utc)


def load(schema: Schema, data, *, partial: bool = False) -> dict:
    """Load ``data`` through ``schema``, turning marshmallow's error into ours."""
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", {"_schema": ["expected an object"]})
    try:
        return schema.load(data, partial=partial)
    except ValidationError as err:
        raise InvalidInput("some fields are not valid", _flatten(err.messages)) from None


def _flatten(messages) -> dict:
    if isinstance(messages, dict):
        return {str(k): v for k, v in messages.items()}
    return {"_schema": list(messages)}
