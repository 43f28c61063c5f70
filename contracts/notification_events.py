"""The notifications service's own event: a notice has deliveries due now.

Its timers (a climb up the escalation ladder, deliveries released when quiet
hours end, a weekly digest) stage it in the service's outbox, and the service
handles it like any other event: retried with backoff, dead-lettered,
replayable. It carries only the notice's id."""
from __future__ import annotations

from marshmallow import fields

from contracts.events import EventType, _Data


class NoticeDueData(_Data):
    notice_id = fields.UUID(required=True)


def catalogue() -> list[EventType]:
    return [EventType(
        name="notice_due", version=1, source="notifications", schema=NoticeDueData,
        consumers=("notifications.handle_notice_due",),
        example={"event_id": "2c7e9a41-8b3d-4f5e-a6c1-0d9b8e7f6a52", "type": "notice_due", "version": 1,
                 "occurred_at": "2026-11-20T14:05:00+00:00", "organization_id": "0c9a3c1e-5f0b-4f7e-8d3a-6b2e1f4c9d70",
                 "case_id": "5e1d7c2a-9b3f-4e68-a0d4-c7f2b8e91a36",
                 "data": {"notice_id": "8e4f2a6c-1b9d-4c7e-b3a5-6d0f9e8c7b21"}},
    )]
