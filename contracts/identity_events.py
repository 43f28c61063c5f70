"""Identity's events: organisations and their members, as the other
services project them.

Each event carries the whole current state of what changed and its
``revision``, so a projection keeps the highest revision it has seen and an
event delivered late or twice changes nothing. Members' work contact points
(e-mail, phone) and their notification settings travel here for
notifications; nothing about a survivor ever does, and no password or token.

A member's notification settings: ``whatsapp_opt_in`` (she agreed to be
written to on WhatsApp), ``quiet_hours`` (a daily window in her
organisation's time zone in which only critical messages reach her; it may
run over midnight, start and end differ), ``digest`` (the weekday, 0 =
Monday, and hour of her digest; null: the rules' default) and
``preferences`` (per notification kind, the channels it reaches her on; an
empty list: none unless critical; a kind not named: the rules decide).
Events of identity before these settings existed load with the defaults.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

if TYPE_CHECKING:
    from contracts.events import EventType

_AT = "2026-11-20T14:05:00+00:00"
_ORG = "0c9a3c1e-5f0b-4f7e-8d3a-6b2e1f4c9d70"
_OTHER_ORG = "6a1f0d2e-4b8c-4e3a-9f7d-2c5b8e1a0d93"
_MEMBER = "a3f9e2c1-7b4d-4c8e-9f1a-2d6b5e0c8f47"


class _Data(Schema):  # as in contracts.events: a field the schema does not name is refused
    class Meta:
        unknown = RAISE


class OrganizationData(_Data):
    code = fields.String(required=True, validate=validate.Regexp(r"[A-Z]{2,6}\Z"))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    country = fields.String(required=True, validate=validate.Regexp(r"[A-Z]{2}\Z"))
    timezone = fields.String(required=True, validate=validate.Length(min=1, max=64))
    language = fields.String(required=True, validate=validate.Length(min=2, max=8))
    overseen_by = fields.List(fields.UUID(), required=True)
    revision = fields.Integer(required=True, validate=validate.Range(min=1))


NOTIFICATION_KINDS = ("case_opened", "case_critical", "risk_high", "case_classified", "step_due_soon",
                      "step_overdue", "step_escalated", "case_closed", "case_reopened", "digest")
# the channels a person chooses among (webhooks belong to an organisation)
PERSONAL_CHANNELS = ("email", "sms", "whatsapp")
CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9]\Z"  # "HH:MM", 00:00 to 23:59


def _distinct(channels: list) -> None:
    if len(set(channels)) != len(channels):
        raise ValidationError("Each channel at most once.")


class QuietHoursData(_Data):
    start = fields.String(required=True, validate=validate.Regexp(CLOCK))
    end = fields.String(required=True, validate=validate.Regexp(CLOCK))

    @validates_schema
    def _a_window(self, data: dict, **kwargs) -> None:
        if data["start"] == data["end"]:
            raise ValidationError("Must differ from start.", "end")


class DigestData(_Data):
    weekday = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=6))
    hour = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=23))


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
    whatsapp_opt_in = fields.Boolean(load_default=False)
    quiet_hours = fields.Nested(QuietHoursData, allow_none=True, load_default=None)
    digest = fields.Nested(DigestData, allow_none=True, load_default=None)
    preferences = fields.Dict(
        keys=fields.String(validate=validate.OneOf(NOTIFICATION_KINDS)),
        values=fields.List(fields.String(validate=validate.OneOf(PERSONAL_CHANNELS)), validate=_distinct),
        load_default=dict)


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
                "supervised_organization_ids": [], "revision": 1, "whatsapp_opt_in": True,
                "quiet_hours": {"start": "21:00", "end": "07:00"}, "digest": {"weekday": 0, "hour": 8},
                "preferences": {"step_due_soon": ["whatsapp"], "case_closed": ["email"], "digest": []}}


def catalogue() -> list[EventType]:
    """The catalogue's entries (``contracts.events`` adds them to its own,
    which is why this module imports nothing from it until asked: the
    kinds and channels above can be imported on their own)."""
    from contracts.events import EventType

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
