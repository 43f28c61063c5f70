"""Helpers for the notifications tests over the real broker: events published
as the cases service publishes them, a clock the test moves, and the
notifications container's own parts."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from kombu import Connection

from contracts.events import build_event
from servicekit.topology import event_exchange


class Clock:
    """A fixed instant the test moves; the notifications service reads it."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta) -> None:
        self.now = self.now + delta


def notifier(container):
    """The ``Notifier`` dependency of a running notifications container."""
    from services.notifications.service import Notifier

    return next(d for d in container.dependencies if isinstance(d, Notifier))


def fix_clock(container, clock: Clock) -> None:
    notifier(container).env.now = clock


def publish(amqp_uri: str, type_: str, *, organization_id: str, case_id: str | None, data: dict,
            occurred_at: datetime | None = None, source: str = "cases") -> dict:
    """Publish a catalogue event on its exchange, as its service's relay
    does (confirmed, persistent); returns the envelope."""
    import json

    envelope = build_event(type_, organization_id=organization_id, case_id=case_id, data=data,
                           occurred_at=occurred_at or datetime.now(timezone.utc))
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish(
            json.dumps(envelope).encode(), exchange=event_exchange(source), routing_key=type_,
            content_type="application/json", content_encoding="utf-8", message_id=envelope["event_id"],
            delivery_mode=2, declare=[],
        )
    return envelope


def step_ref() -> str:
    return uuid.uuid4().hex[:16]


def nobody_excluded(monkeypatch) -> None:
    """For tests that publish a case's events without the cases service
    having the case: notifications hears that nobody is excluded from it,
    instead of asking cases (which would refuse an unknown case, so the
    event would wait). Exclusions themselves are tested, through cases, in
    ``test_notification_exclusions``."""
    from services.notifications.service import NotificationsService

    monkeypatch.setattr(NotificationsService, "_excluded",
                        lambda self, organization_id, case_id, user_ids: set())
