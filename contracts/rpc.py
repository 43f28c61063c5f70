"""Shapes of the RPC calls between the gateway and the services.

Each RPC takes the caller (who is asking, for which organisation, with which
roles) as its first argument: services check access again themselves rather
than trusting that the gateway did (design rule 6).
"""
from __future__ import annotations

from datetime import timezone

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from contracts.errors import InvalidInput
from contracts.events import REOPEN_REASONS
from contracts.fields import Instant, StrictBoolean, StrictInteger, StrictList, StrictString

ROLES = ("focal_point", "case_lead", "president", "supervisor", "programme", "operator", "admin")
# the roles a service signs for itself, for the one question it may ask another: never a
# person's (identity accepts ROLES alone, and the gateway signs only the roles identity keeps)
SERVICE_ROLES = ("notifications",)
PLACES = ("mine_site", "camp", "processing_plant", "home", "public_space", "other", "unknown")
PERPETRATOR_RELATIONSHIPS = ("co_worker", "supervisor", "partner", "family", "buyer_trader", "unknown", "other")
CONTEXT_FLAGS = ("intimate_partner_violence", "workplace_harassment", "possible_sexual_exploitation")
QUESTIONS = ("rape", "sexual_assault", "physical_assault", "forced_marriage", "denial_of_resources",
             "psychological_abuse")
INCIDENT_TYPES = QUESTIONS + ("non_gbv",)
RISK_LEVELS = ("low", "medium", "high")
CONSENT_PURPOSES = ("case_management", "referral", "aggregate_reporting")
DATA_CATEGORIES = ("contact", "incident_summary", "medical", "protection_needs", "identity")
AGE_GROUPS = ("0-11", "12-17", "18-25", "26-40", "41-60", "61+", "unknown")
SEXES = ("female", "male", "other", "unknown")


class Strict(Schema):
    """Every input schema: unknown fields are refused, and its fields are the
    strict ones of ``contracts.fields`` (no coercion of types)."""

    class Meta:
        unknown = RAISE


def _choice(choices, **kwargs) -> StrictString:
    return StrictString(validate=validate.OneOf(choices), **kwargs)


class CallerSchema(Strict):
    user_id = fields.UUID(required=True)
    organization_id = fields.UUID(required=True)
    roles = StrictList(_choice(ROLES + SERVICE_ROLES), max_items=len(ROLES + SERVICE_ROLES), required=True)
    supervised_organization_ids = StrictList(fields.UUID(), max_items=1000, load_default=list)
    # the gateway's signature (servicekit.callers): checked before the schema
    issued_at = StrictInteger(load_default=None)
    key_id = StrictString(load_default=None, validate=validate.Length(max=64))
    signature = StrictString(load_default=None, validate=validate.Length(max=128))


class OpenCaseSchema(Strict):
    """What a focal point sends to open a case. Narrative and name are optional
    and are encrypted by the cases service before they touch the disk."""

    age_group = _choice(AGE_GROUPS, required=True)
    sex = _choice(SEXES, load_default="unknown")
    incident_at = Instant(load_default=None, allow_none=True)
    narrative = StrictString(
        load_default=None, allow_none=True, validate=validate.Length(max=20000)
    )
    survivor_name = StrictString(
        load_default=None, allow_none=True, validate=validate.Length(min=1, max=200)
    )
    organization_id = fields.UUID(load_default=None, allow_none=True)
    idempotency_key = StrictString(
        load_default=None, allow_none=True, validate=validate.Length(min=1, max=100)
    )
    minor = StrictBoolean(load_default=False)
    disability = StrictBoolean(load_default=None, allow_none=True)
    place = _choice(PLACES, load_default=None, allow_none=True)
    perpetrator_relationship = _choice(PERPETRATOR_RELATIONSHIPS, load_default=None, allow_none=True)
    context_flags = StrictList(_choice(CONTEXT_FLAGS), max_items=len(CONTEXT_FLAGS), load_default=None)
    # the focal point's first safety check may already say the risk is high:
    # the plan's deadlines follow it, and the committee is told as of a critical case
    risk_level = _choice(RISK_LEVELS, load_default=None, allow_none=True)


class Versioned(Strict):
    """The body of an edit of a case. The version the edit was made on is not
    in the body (a ``version`` there is an unknown field): the HTTP client
    sends it as ``If-Match`` and the gateway passes it as the RPC's
    ``expected_version`` argument (``ExpectedVersionSchema``)."""


class ExpectedVersionSchema(Strict):
    """The version of the case an edit was made on; the service refuses the
    edit (``Stale``) unless the case is still at it. 0 names no version (an
    ``If-Match`` that is not one of the case's entity tags): always stale."""

    expected_version = StrictInteger(required=True, validate=validate.Range(min=0, max=2**31 - 1))


class UpdateCaseSchema(Versioned):
    age_group = _choice(AGE_GROUPS)
    sex = _choice(SEXES)
    incident_at = Instant(allow_none=True)
    minor = StrictBoolean()
    disability = StrictBoolean(allow_none=True)
    place = _choice(PLACES, allow_none=True)
    perpetrator_relationship = _choice(PERPETRATOR_RELATIONSHIPS, allow_none=True)
    context_flags = StrictList(_choice(CONTEXT_FLAGS), max_items=len(CONTEXT_FLAGS))


class ClassifySchema(Versioned):
    answers = fields.Dict(keys=_choice(QUESTIONS), values=fields.Raw(), load_default=None)
    incident_type = _choice(INCIDENT_TYPES, load_default=None)

    @validates_schema
    def _answers_are_booleans(self, data: dict, **kwargs) -> None:
        # named by the question, as the classification's own errors are
        wrong = {q: ["answer yes (true) or no (false)"] for q, a in (data.get("answers") or {}).items()
                 if a is not True and a is not False}
        if wrong:
            raise ValidationError(wrong)


class RiskSchema(Versioned):
    risk_level = _choice(RISK_LEVELS, required=True)


class AssignLeadSchema(Versioned):
    case_lead_id = fields.UUID(required=True)


class ExcludeSchema(Versioned):
    user_id = fields.UUID(required=True)


class ConsentSchema(Strict):
    purpose = _choice(CONSENT_PURPOSES, required=True)
    given_by = _choice(("survivor", "caregiver"), required=True)
    provider_id = fields.UUID(load_default=None, allow_none=True)
    data_shared = StrictList(_choice(DATA_CATEGORIES), max_items=len(DATA_CATEGORIES), load_default=list)
    child_assent = StrictBoolean(load_default=None, allow_none=True)


class CompleteStepSchema(Strict):
    outcome = _choice(("done", "declined"), load_default="done")
    note = StrictString(load_default=None, allow_none=True, validate=validate.Length(max=5000))


class CloseSchema(Versioned):
    reason = _choice(("survivor_agreed", "lost_contact"), required=True)


class ReopenSchema(Versioned):
    reason = _choice(REOPEN_REASONS, required=True)  # a code, never free text: it travels in an event


class ListFilterSchema(Strict):
    """The gateway turns the query string into these types (``overdue=true``
    into ``True``); anything else it refuses."""

    status = _choice(("open", "in_progress", "closed", "reopened"))
    risk_level = _choice(RISK_LEVELS)
    overdue = StrictBoolean()
    page = StrictInteger(load_default=1, validate=validate.Range(min=1, max=100000))
    per_page = StrictInteger(load_default=25, validate=validate.Range(min=1, max=100))


_QUARTER = validate.Regexp(r"\d{4}-Q[1-4]\Z", error="a calendar quarter, e.g. 2026-Q1")


class StatisticsFilterSchema(Strict):
    """Whole calendar quarters, both included: ``from=2026-Q1&to=2026-Q4`` is
    2026, reported quarter by quarter. Months are refused: figures of two
    month ranges could be subtracted to give a withheld one."""

    from_ = StrictString(data_key="from", load_default=None, validate=_QUARTER)
    to = StrictString(load_default=None, validate=_QUARTER)


class CaseViewSchema(Schema):
    """A case as the API shows it in a list or after opening; no narrative."""

    id = fields.UUID()
    version = fields.Integer()
    minor = fields.Boolean()
    risk_level = fields.String(allow_none=True)
    incident_type = fields.String(allow_none=True)
    delay_bucket = fields.String(allow_none=True)
    case_lead_id = fields.UUID(allow_none=True)
    child_sexual_abuse = fields.Boolean()
    mandatory_report = fields.Boolean()
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
    kind = fields.String()
    channel = fields.String()
    recipient_role = fields.String()
    status = fields.String()
    attempts = fields.Integer()
    sent_at = fields.AwareDateTime(allow_none=True, default_timezone=timezone.utc)
    provider_code = fields.String(allow_none=True)


class NoticeStepSchema(Schema):
    """One line of a case's notification history: an attempt or an
    escalation step. Never a body, an address or a person."""

    at = fields.AwareDateTime(default_timezone=timezone.utc)
    kind = fields.String()
    step = fields.String()
    rung = fields.String(allow_none=True)
    recipient_role = fields.String(allow_none=True)
    channel = fields.String(allow_none=True)
    code = fields.String(allow_none=True)


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


def jsonable(value):
    """Dates to ISO strings, tuples to lists: what nameko's JSON can carry."""
    from datetime import datetime

    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
