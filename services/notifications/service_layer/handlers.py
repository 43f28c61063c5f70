"""What the notifications service does with the events it hears."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Callable, Protocol
from zoneinfo import ZoneInfo

from services.notifications.adapters.templates import Renderer
from services.notifications.domain import model
from services.notifications.domain.model import DeliveryStatus, Message, Recipient
from services.notifications.service_layer.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

CASE_OPENED = "notify_case_opened"


class Sender(Protocol):
    channel: str

    def send(self, address: str, message: Message, *, message_key: str) -> None: ...


Outcome = Callable[[str, str], None]  # (channel, outcome)


def register_organization(uow: UnitOfWork, *, organization_id: str, timezone_name: str) -> None:
    uow.upsert_organization(organization_id, timezone_name)
    uow.commit()


def register_recipient(uow: UnitOfWork, recipient: Recipient) -> None:
    uow.upsert_recipient(recipient)
    uow.commit()


def notify_case_opened(
    uow: UnitOfWork,
    senders: dict[str, Sender],
    renderer: Renderer,
    event: dict,
    *,
    public_url: str,
    outcome: Outcome = lambda channel, result: None,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> bool:
    """Tell every president of the organisation that a case was opened.

    Safe to run any number of times for one event: each (event, recipient,
    channel) is planned once, claimed before sending and marked sent after,
    and the event is recorded as handled only when nothing is left to send.
    Raises ``DeliveryFailed`` while anything is left, so that the event is
    tried again later. Returns False for an event already handled.
    """
    event_id = str(event["event_id"])
    if uow.handled(event_id, CASE_OPENED):
        return False
    organization_id = str(event["organization_id"])
    presidents = model.recipients_for_case_opened(uow.recipients(organization_id))
    if not presidents:
        log.warning("no president to tell of a new case", extra={"organization_id": organization_id})
    for recipient in presidents:
        uow.plan_delivery(event=event, recipient=recipient, now=now())
    uow.commit()

    tz_name = uow.organization_timezone(organization_id) or "UTC"
    opened_at = event["data"]["opened_at"].astimezone(ZoneInfo(tz_name))
    link = f"{public_url.rstrip('/')}/console/cases/{event['case_id']}"
    unfinished = 0
    for delivery in uow.unsent(event_id):
        if not uow.claim(delivery.id, now()):
            unfinished += 1  # another copy of this event is sending it right now
            uow.commit()
            continue
        uow.commit()
        recipient = uow.recipient(delivery.recipient_id)
        if recipient is None or delivery.channel not in senders:
            uow.finish(delivery.id, DeliveryStatus.CANCELLED, now=now(), error="NoRecipient")
            uow.commit()
            outcome(delivery.channel, "cancelled")
            continue
        message = renderer.render(
            "case_opened",
            recipient.locale,
            survivor_code=event["data"]["survivor_code"],
            opened_at=opened_at.strftime("%Y-%m-%d %H:%M"),
            timezone=tz_name,
            link=link,
        )
        uow.commit()  # no transaction (nor SQLite's one connection) held while SMTP talks
        try:
            senders[delivery.channel].send(
                recipient.address, message, message_key=f"{event_id}:{recipient.user_id}:{delivery.channel}"
            )
        except Exception as exc:
            uow.finish(delivery.id, DeliveryStatus.FAILED, now=now(), error=type(exc).__name__)
            uow.commit()
            outcome(delivery.channel, "failed")
            log.warning(
                "delivery failed", extra={"channel": delivery.channel, "error": type(exc).__name__, "event_id": event_id}
            )
            unfinished += 1
            continue
        uow.finish(delivery.id, DeliveryStatus.SENT, now=now())
        uow.commit()
        outcome(delivery.channel, "sent")

    if unfinished:
        raise model.DeliveryFailed(f"{unfinished} deliveries left")
    uow.mark_handled(event_id, CASE_OPENED)
    uow.commit()
    return True


def case_notifications(uow: UnitOfWork, *, organization_id: str, case_id: str) -> dict:
    rows = [d for d in uow.deliveries_for_case(case_id) if d["organization_id"] == organization_id]
    return {
        "status": model.overall_status([d["status"] for d in rows]),
        "deliveries": [
            {
                "channel": d["channel"],
                "recipient_role": d["recipient_role"],
                "status": d["status"],
                "attempts": d["attempts"],
                "sent_at": d["sent_at"],
            }
            for d in rows
        ],
    }
