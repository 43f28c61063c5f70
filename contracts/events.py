"""The event catalogue: name, version, schema and example of every event.

Events carry ids, codes, enums and timestamps; never narrative, names, phone
numbers or addresses. A schema here is the contract: producers dump through
it, consumers load through it, and the catalogue test checks every example.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields

from contracts.envelope import EnvelopeSchema, new_event_id, utcnow


class CaseOpenedData(Schema):
    class Meta:
        unknown = RAISE

    survivor_code = fields.String(required=True)
    opened_by = fields.UUID(required=True)
    opened_at = fields.AwareDateTime(required=True)


@dataclass(frozen=True)
class EventType:
    name: str
    version: int
    source: str
    schema: type[Schema]
    example: dict


CATALOGUE: dict[str, EventType] = {
    "case_opened": EventType(
        name="case_opened",
        version=1,
        source="cases",
        schema=CaseOpenedData,
        example={
            "event_id": "7f2b6a9e-3c1d-4a57-9b8e-2d4f6a1c0e93",
            "type": "case_opened",
            "version": 1,
            "occurred_at": "2026-11-20T14:05:00+00:00",
            "organization_id": "0c9a3c1e-5f0b-4f7e-8d3a-6b2e1f4c9d70",
            "case_id": "5e1d7c2a-9b3f-4e68-a0d4-c7f2b8e91a36",
            "data": {
                "survivor_code": "CEC-2026-0001",
                "opened_by": "a3f9e2c1-7b4d-4c8e-9f1a-2d6b5e0c8f47",
                "opened_at": "2026-11-20T14:05:00+00:00",
            },
        },
    ),
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
    schema = event_type.schema()
    unknown = sorted(set(data) - set(schema.fields))
    if unknown:  # dump would drop them silently; a producer must hear of it
        raise ValidationError({key: ["not part of the event"] for key in unknown})
    payload = schema.dump(data)
    schema.load(payload)  # a producer must not publish what a consumer rejects
    return EnvelopeSchema().dump(
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


def load_event(body: dict, expected_type: str) -> dict[str, Any]:
    """Load an envelope and its data; raises ``ValidationError`` on a bad one."""
    envelope = EnvelopeSchema().load(body)
    if envelope["type"] != expected_type:
        raise ValidationError({"type": [f"expected {expected_type}"]})
    event_type = CATALOGUE[expected_type]
    if envelope["version"] != event_type.version:
        raise ValidationError({"version": [f"unsupported version {envelope['version']}"]})
    envelope["data"] = event_type.schema().load(envelope["data"])
    return envelope
