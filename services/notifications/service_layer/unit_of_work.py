"""Recipients, deliveries and the inbox of the notifications service."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from servicekit import inbox
from services.notifications.adapters import orm
from services.notifications.domain.model import DeliveryStatus, Recipient

CLAIM_SECONDS = 60



class UnitOfWork:
    def __init__(self, session: Session):
        self.session = session

    # -- projection -------------------------------------------------------
    def upsert_organization(self, organization_id: str, timezone_name: str) -> None:
        t = orm.organizations
        updated = self.session.execute(update(t).where(t.c.id == organization_id).values(timezone=timezone_name))
        if updated.rowcount == 0:
            self.session.execute(insert(t).values(id=organization_id, timezone=timezone_name))

    def organization_timezone(self, organization_id: str) -> str | None:
        t = orm.organizations
        return self.session.execute(select(t.c.timezone).where(t.c.id == organization_id)).scalar()

    def upsert_recipient(self, r: Recipient) -> None:
        t = orm.recipients
        values = dict(
            organization_id=r.organization_id, role=r.role, channel=r.channel, address=r.address,
            locale=r.locale, active=1,
        )
        updated = self.session.execute(update(t).where(t.c.user_id == r.user_id).values(**values))
        if updated.rowcount == 0:
            self.session.execute(insert(t).values(user_id=r.user_id, **values))

    def recipients(self, organization_id: str) -> list[Recipient]:
        t = orm.recipients
        rows = self.session.execute(
            select(t).where(t.c.organization_id == organization_id, t.c.active == 1).order_by(t.c.user_id)
        ).all()
        return [Recipient(r.user_id, r.organization_id, r.role, r.channel, r.address, r.locale) for r in rows]

    def recipient(self, user_id: str) -> Recipient | None:
        t = orm.recipients
        r = self.session.execute(select(t).where(t.c.user_id == user_id)).first()
        return Recipient(r.user_id, r.organization_id, r.role, r.channel, r.address, r.locale) if r else None

    # -- inbox ------------------------------------------------------------
    def handled(self, event_id: str, handler: str) -> bool:
        return inbox.seen(self.session, orm.processed_events, event_id, handler)

    def mark_handled(self, event_id: str, handler: str) -> None:
        try:
            with self.session.begin_nested():
                inbox.record(self.session, orm.processed_events, event_id, handler)
        except IntegrityError:
            pass  # a concurrent copy of the same event got there first

    # -- deliveries -------------------------------------------------------
    def plan_delivery(self, *, event: dict, recipient: Recipient, now: datetime) -> None:
        """Create the delivery row once per (event, recipient, channel)."""
        try:
            with self.session.begin_nested():
                self.session.execute(
                    insert(orm.deliveries).values(
                        event_id=str(event["event_id"]),
                        event_type=event["type"],
                        organization_id=str(event["organization_id"]),
                        case_id=str(event["case_id"]) if event.get("case_id") else None,
                        recipient_id=recipient.user_id,
                        recipient_role=recipient.role,
                        channel=recipient.channel,
                        status=DeliveryStatus.PENDING.value,
                        attempts=0,
                        created_at=now,
                    )
                )
        except IntegrityError:
            pass  # planned by an earlier try of this event

    def unsent(self, event_id: str) -> list:
        t = orm.deliveries
        return self.session.execute(
            select(t)
            .where(
                t.c.event_id == event_id,
                t.c.status.notin_([DeliveryStatus.SENT.value, DeliveryStatus.CANCELLED.value]),
            )
            .order_by(t.c.id)
        ).all()

    def claim(self, delivery_id: int, now: datetime) -> bool:
        """Take a delivery for sending. Only one worker wins; a claim held by a
        worker that died expires after ``CLAIM_SECONDS``."""
        t = orm.deliveries
        result = self.session.execute(
            update(t)
            .where(
                t.c.id == delivery_id,
                or_(
                    t.c.status.in_([DeliveryStatus.PENDING.value, DeliveryStatus.FAILED.value]),
                    and_(t.c.status == DeliveryStatus.SENDING.value, t.c.claimed_until < now),
                ),
            )
            .values(
                status=DeliveryStatus.SENDING.value,
                claimed_until=now + timedelta(seconds=CLAIM_SECONDS),
                attempts=t.c.attempts + 1,
            )
        )
        return result.rowcount == 1

    def finish(self, delivery_id: int, status: DeliveryStatus, *, now: datetime, error: str | None = None) -> None:
        t = orm.deliveries
        values = {"claimed_until": None, "last_error": error}
        values["status"] = status.value
        if status is DeliveryStatus.SENT:
            values["sent_at"] = now
        self.session.execute(update(t).where(t.c.id == delivery_id).values(**values))

    def deliveries_for_case(self, case_id: str) -> list:
        t = orm.deliveries
        rows = self.session.execute(select(t).where(t.c.case_id == case_id).order_by(t.c.id)).all()
        return [dict(r._mapping) for r in rows]

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()
