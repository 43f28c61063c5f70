"""Shapes of what the HTTP API answers, for its OpenAPI document.

The services make these answers (``contracts.rpc`` has the case view they
dump); the gateway adds the error body, the page links and the notification
state. Every field a service may leave empty is ``allow_none``: the document
says exactly what a client can receive.
"""
from __future__ import annotations

from marshmallow import Schema, fields

from contracts.rpc import CaseViewSchema, DeliveryViewSchema, NoticeStepSchema


class ErrorBodySchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    # a field's messages; nested objects name the part of the field at fault
    fields = fields.Dict(keys=fields.String(), values=fields.Raw(), required=True)


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)


class ReadySchema(Schema):
    status = fields.String(required=True)
    services = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


class PageLinksSchema(Schema):
    next = fields.String(metadata={"description": "the next page, absent on the last one"})


class CasePageSchema(Schema):
    items = fields.List(fields.Nested(CaseViewSchema), required=True)
    total = fields.Integer(required=True)
    page = fields.Integer(required=True)
    per_page = fields.Integer(required=True)
    links = fields.Nested(PageLinksSchema, required=True)


class PlanStepSchema(Schema):
    step_id = fields.String()
    ref = fields.String(metadata={"description": "the step's opaque reference, as step events name it"})
    title = fields.Dict(keys=fields.String(), values=fields.String())
    responsible = fields.List(fields.String())
    done_when = fields.String(allow_none=True)
    due_at = fields.AwareDateTime()
    urgent = fields.Boolean()
    status = fields.String()
    overdue = fields.Boolean()
    completed_at = fields.AwareDateTime(allow_none=True)
    completed_by = fields.String(allow_none=True)
    outcome = fields.String(allow_none=True)
    note = fields.String(allow_none=True)
    approved_by = fields.String(allow_none=True)
    needs_approval_by = fields.String(allow_none=True)


class PlanSchema(Schema):
    protocol = fields.String(allow_none=True)
    version = fields.Integer(allow_none=True)
    steps = fields.List(fields.Nested(PlanStepSchema))


class ConsentViewSchema(Schema):
    id = fields.String()
    purpose = fields.String()
    provider_id = fields.String(allow_none=True)
    data_shared = fields.List(fields.String())
    given_by = fields.String()
    child_assent = fields.Boolean(allow_none=True)
    recorded_by = fields.String()
    recorded_at = fields.AwareDateTime()
    withdrawn_at = fields.AwareDateTime(allow_none=True)


class StatusChangeSchema(Schema):
    from_ = fields.String(data_key="from", allow_none=True)
    to = fields.String()
    reason = fields.String(allow_none=True)
    by = fields.String()
    at = fields.AwareDateTime()


class NotificationStateSchema(Schema):
    status = fields.String()
    deliveries = fields.List(fields.Nested(DeliveryViewSchema))
    history = fields.List(fields.Nested(NoticeStepSchema))


class CaseDetailSchema(CaseViewSchema):
    place = fields.String(allow_none=True)
    perpetrator_relationship = fields.String(allow_none=True)
    context_flags = fields.List(fields.String())
    disability = fields.Boolean(allow_none=True)
    narrative = fields.String(allow_none=True)
    survivor_name = fields.String(allow_none=True)
    plan = fields.Nested(PlanSchema)
    consents = fields.List(fields.Nested(ConsentViewSchema))
    history = fields.List(fields.Nested(StatusChangeSchema))
    notifications = fields.Nested(NotificationStateSchema)


class ConsentRecordedSchema(Schema):
    id = fields.String(required=True)
    purpose = fields.String(required=True)
    case_version = fields.Integer(required=True, metadata={"description": "the case's version after the edit"})


class ConsentWithdrawnSchema(ConsentRecordedSchema):
    withdrawn = fields.Boolean(required=True)


class AuditEntrySchema(Schema):
    id = fields.Integer()
    actor_id = fields.String()
    action = fields.String()
    at = fields.AwareDateTime()
    fields = fields.List(fields.String())  # last: the name hides marshmallow's module in this class


class ProviderSchema(Schema):
    id = fields.String()
    name = fields.String()
    kind = fields.String()


class ProvidersSchema(Schema):
    items = fields.List(fields.Nested(ProviderSchema), required=True)


class StatisticsSchema(Schema):
    """Anonymous counts by incident type, period, age group and context;
    counts under the threshold the answer names are withheld as ``null``.
    Its dimensions are the statistics' own (README): open-ended here."""

    class Meta:
        unknown = "include"
