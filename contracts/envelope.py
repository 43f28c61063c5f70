"""The envelope every Warmi event travels in (design rule 3)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from marshmallow import Schema, fields


class EnvelopeSchema(Schema):
    event_id = fields.UUID(required=True)
    type = fields.String(required=True)
    version = fields.Integer(required=True)
    occurred_at = fields.AwareDateTime(required=True, default_timezone=timezone.utc)
    organization_id = fields.UUID(required=True)
    case_id = fields.UUID(load_default=None, allow_none=True)
    data = fields.Dict(required=True)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_event_id() -> str:
    return str(uuid.uuid4())
