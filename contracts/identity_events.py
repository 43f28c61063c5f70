"""Identity's events: organisations and their members, as the other
services project them.

Each event carries the whole current state of what changed and its
``revision``, so a projection keeps the highest revision it has seen and an
event delivered late or twice changes nothing. Members' work contact points
(e-mail, phone) travel here for notifications; nothing about a survivor ever
does, and no password or token.
"""
from __future__ import annotations

from marshmallow import fields, validate

from contracts.events import EventType, _Data

_AT = "2026-11-20T14:05:00+00:00"
_ORG = "0c9a3c1e-5f0b-4f7e-8d3a-6b2e1f4c9d70"
_OTHER_ORG = "6a1f0d2e-4b8c-4e3a-9f7d-2c5b8e1a0d93"
_MEMBER = "a3f9e2c1-7b4d-4c8e-9f1a-2d6b5e0c8f47"


class OrganizationData(_Data):
    code = fields.String(required=True, validate=validate.Regexp(r"[A-Z]{2,6}\Z"))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    country = fields.String(required=True, validate=validate.Regexp(r"[A-Z]{2}\Z"))
    timezone = fields.String(required=True, validate=validate.Length(min=1, max=64))
    language = fields.String(required=True, validate=validate.Length(min=2, max=8))
    overseen_by = fields.List(fields.UUID(), required=True)
    revision = fields.Integer(required=True, validate=validate.Range(min=1))


class MemberData(_Data):
    member_id = fields.UUID(required=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    email = fields.String(required=True, allow_none=True, validate=validate.Length(max=320))
    phone = fields.String(required=True, allow_none=True, validate=validate.Regexp(r"\+[1-9][0-9]{6,14}\Z"))
    language = fields.String(required=True, validate=validate.Length(min=2, max=8))
    roles = fields.List(fields.String(), required=True)
    active = fields.Boolean(required=True)
    supervised_organization_ids = fields.List(fields.UUID(), required=True)
    revision = fields.Integer(required=True, validate=validate.Range(min=1))


ORGANIZATION_EVENTS = ("organization_registered", "organization_changed")
MEMBER_EVENTS = ("member_added", "member_changed", "member_deactivated", "member_roles_changed",
                 "supervision_granted", "supervision_ended")


def _example(name: str, data: dict) -> dict:
    return {"event_id": "9d2c4e6f-1a3b-4c5d-8e7f-0a1b2c3d4e5f", "type": name, "version": 1, "occurred_at": _AT,
            "organization_id": _ORG, "case_id": None, "data": data}


_ORG_DATA = {"code": "CEC", "name": "Cooperativa CEC", "country": "PE", "timezone": "America/Lima",
             "language": "es", "overseen_by": [], "revision": 1}
_MEMBER_DATA = {"member_id": _MEMBER, "name": "Rosa Quispe", "email": "rosa@cec.example", "phone": "+51987654321",
                "language": "es", "roles": ["case_lead", "president"], "active": True,
                "supervised_organization_ids": [], "revision": 1}


def catalogue() -> list[EventType]:
    events = [
        EventType(name=name, version=1, source="identity", schema=OrganizationData, example=_example(name, _ORG_DATA),
                  consumers=(f"cases.handle_{name}", f"notifications.handle_{name}"))
        for name in ORGANIZATION_EVENTS
    ]
    events += [
        EventType(name=name, version=1, source="identity", schema=MemberData,
                  example=_example(name, {**_MEMBER_DATA, **(
                      {"active": False} if name == "member_deactivated" else
                      {"roles": ["supervisor"], "supervised_organization_ids": [_OTHER_ORG]}
                      if name.startswith("supervision") else {})}),
                  consumers=(f"notifications.handle_{name}",))
        for name in MEMBER_EVENTS
    ]
    return events
