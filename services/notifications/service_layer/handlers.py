"""What the notifications service does with the events it hears.

A case-opened event costs two short transactions, however many presidents
it reaches: one claims the deliveries, one records how they went; the
e-mails go out in between, with no transaction (nor SQLite's one pooled
connection) held while SMTP talks. See ``notify_case_opened``."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Protocol
from zoneinfo import ZoneInfo

from services.notifications.adapters.templates import Renderer
from services.notifications.domain import model
from services.notifications.domain.model import Attempt, Claimed, DeliveryStatus, Message, Recipient
from services.notifications.service_layer.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

CASE_OPENED = "notify_case_opened"


class Sender(Protocol):
    channel: str

    def send(self, address: str, message: Message, *, message_key: str) -> None: ...


Outcome = Callable[[str, str], None]  # (channel, outcome)


def project_organization(uow: UnitOfWork, event: dict, handler: str) -> bool:
    """An organisation as identity announced it, once per event; False if
    the event was already handled."""
    if not uow.mark_handled(str(event["event_id"]), handler):
        return False
    uow.project_organization(str(event["organization_id"]), event["data"])
    uow.commit()
    return True


def project_member(uow: UnitOfWork, event: dict, handler: str) -> bool:
    """A member as identity announced her (every role, her contact points,
    language and supervisions), once per event."""
    if not uow.mark_handled(str(event["event_id"]), handler):
        return False
    uow.project_member(str(event["organization_id"]), event["data"])
    uow.commit()
    return True


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

    Two transactions, and nothing held open while SMTP talks:

    1. ``claim_deliveries`` (one transaction): the inbox check, the
       recipients and the time zone, and the deliveries claimed by this
       worker;
    2. ``deliver``: each claimed delivery is rendered and sent;
    3. ``record_attempts`` (one transaction): every outcome and, when
       nothing is left to send, the event marked handled. Then the outcomes
       are counted (``outcome``).

    Safe to run any number of times for one event, and by two copies of it
    at once: each (event, recipient, channel) is planned once, claimed
    before sending (only one worker wins a delivery; the claim of a worker
    that died expires after ``CLAIM_SECONDS``), and the event is recorded as
    handled only when nothing is left to send. Raises ``DeliveryFailed``
    while anything is left, so that the event is tried again later. If the
    outcomes cannot be recorded, the deliveries stay claimed and are sent
    again once the claim expires: at least once, with the same Message-ID.
    Returns False for an event already handled.
    """
    event_id = str(event["event_id"])
    batch = claim_deliveries(uow, event, now())
    if batch is None:
        return False
    texts = Texts(renderer, event, batch.timezone, public_url)
    attempts = [deliver(claimed, senders, texts, event_id) for claimed in batch.claimed]
    left = batch.left + sum(a.status is DeliveryStatus.FAILED for a in attempts)
    record_attempts(uow, event_id, attempts, handled=not left, now=now())
    for attempt in attempts:
        outcome(attempt.channel, attempt.status.value)
    if left:
        raise model.DeliveryFailed(f"{left} deliveries left")
    return True


@dataclass(frozen=True)
class Batch:
    """What one try of an event sends: the deliveries this worker claimed,
    how many others are still unsent (held by another worker, or planned by
    a concurrent copy), and the organisation's time zone."""

    claimed: list[Claimed]
    left: int
    timezone: str


def claim_deliveries(uow: UnitOfWork, event: dict, now: datetime) -> Batch | None:
    """One committed transaction: None if the event is handled already;
    else the deliveries this worker now holds. A brand-new event's
    deliveries are planned already claimed, in one insert; on a later try
    (or when a concurrent copy planned them first) the unsent ones are
    claimed instead, and the copy that loses a delivery does not send it."""
    event_id = str(event["event_id"])
    state = uow.event_state(event_id, CASE_OPENED)
    if state.handled:
        uow.rollback()
        return None
    organization_id = str(event["organization_id"])
    people, tz_name = uow.recipients_with_timezone(organization_id)
    presidents = model.recipients_for_case_opened(people)
    if not presidents:
        log.warning("no president to tell of a new case", extra={"organization_id": organization_id})
    if not state.planned:
        if uow.plan_claimed(event=event, recipients=presidents, now=now):
            uow.commit()
            return Batch([Claimed(p.user_id, p.channel, p) for p in presidents], 0, tz_name or "UTC")
        # a concurrent copy planned them first (and the transaction was rolled back)
        if uow.event_state(event_id, CASE_OPENED).handled:
            uow.rollback()
            return None
    batch = claim_planned(uow, event, presidents, tz_name or "UTC", now)
    uow.commit()
    return batch


def claim_planned(uow: UnitOfWork, event: dict, presidents: list[Recipient], tz_name: str, now: datetime) -> Batch:
    """For an event with deliveries planned already (inside the caller's
    transaction): plan those of presidents added since, then claim every
    unsent one that no live worker holds."""
    event_id = str(event["event_id"])
    planned = uow.deliveries_of(event_id)
    known = {(d.recipient_id, d.channel) for d in planned}
    claimed, left = [], 0
    for person in presidents:
        if (person.user_id, person.channel) in known:
            continue
        if uow.plan_delivery(event=event, recipient=person, now=now):
            claimed.append(Claimed(person.user_id, person.channel, person))
        else:
            left += 1  # a concurrent copy planned it, and sends it
    won = uow.claim_unsent(event_id, now)
    for delivery in planned:
        key = (delivery.recipient_id, delivery.channel)
        if key in won:
            claimed.append(Claimed(delivery.recipient_id, delivery.channel, delivery.recipient))
        elif delivery.status not in model.FINISHED:
            left += 1  # another worker holds it right now
    for recipient_id, channel in won - known:  # planned by a copy between the two statements
        claimed.append(Claimed(recipient_id, channel, uow.recipient(recipient_id)))
    return Batch(claimed, left, tz_name)


class Texts:
    """The case-opened message in each recipient's language, rendered once
    per language for an event, when first needed: a failure to render (an
    unknown time zone, say) fails the delivery, which is then recorded."""

    def __init__(self, renderer: Renderer, event: dict, tz_name: str, public_url: str):
        self.renderer, self.event, self.tz_name, self.public_url = renderer, event, tz_name, public_url
        self.by_locale: dict[str, Message] = {}

    def for_locale(self, locale: str) -> Message:
        if locale not in self.by_locale:
            self.by_locale[locale] = self.renderer.render("case_opened", locale, **self._values())
        return self.by_locale[locale]

    def _values(self) -> dict:
        data = self.event["data"]
        return dict(
            survivor_code=data["survivor_code"],
            opened_at=data["opened_at"].astimezone(ZoneInfo(self.tz_name)).strftime("%Y-%m-%d %H:%M"),
            timezone=self.tz_name,
            link=f"{self.public_url.rstrip('/')}/console/cases/{self.event['case_id']}",
        )


def deliver(claimed: Claimed, senders: dict[str, Sender], texts: Texts, event_id: str) -> Attempt:
    """Send one claimed delivery; never raises. Outside any transaction."""
    recipient, channel = claimed.recipient, claimed.channel
    if recipient is None or channel not in senders:
        return Attempt(claimed.recipient_id, channel, DeliveryStatus.CANCELLED, "NoRecipient")
    try:
        senders[channel].send(
            recipient.address, texts.for_locale(recipient.locale),
            message_key=f"{event_id}:{recipient.user_id}:{channel}",
        )
    except Exception as exc:
        log.warning("delivery failed", extra={"channel": channel, "error": type(exc).__name__, "event_id": event_id})
        return Attempt(claimed.recipient_id, channel, DeliveryStatus.FAILED, type(exc).__name__)
    return Attempt(claimed.recipient_id, channel, DeliveryStatus.SENT)


def record_attempts(uow: UnitOfWork, event_id: str, attempts: list[Attempt], *, handled: bool, now: datetime) -> None:
    """One committed transaction: every outcome and, if ``handled``, the
    event in the inbox. Should a concurrent copy have recorded the event
    first, the outcomes are written again without it."""
    uow.finish(event_id, attempts, now=now)
    if handled and not uow.mark_handled(event_id, CASE_OPENED):
        uow.finish(event_id, attempts, now=now)
    uow.commit()


def case_notifications(uow: UnitOfWork, *, organization_ids: set[str], case_id: str) -> dict:
    """Deliveries about a case, if it belongs to one of ``organization_ids``;
    of any other case, nothing (as if there were none)."""
    rows = [d for d in uow.deliveries_for_case(case_id) if d["organization_id"] in organization_ids]
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
