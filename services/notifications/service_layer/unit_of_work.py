"""Recipients, deliveries and the inbox of the notifications service.

The statements a delivery needs, few and whole-event at a time: one query for
the event's state (handled? planned?), one for the recipients and their
organisation's time zone, one insert that plans a new event's deliveries
already claimed, one update that records every outcome. The unit of work
never commits by itself: the handler says where each transaction ends.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, bindparam, delete, exists, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.notifications.adapters import orm
from services.notifications.domain.model import Attempt, DeliveryStatus, Recipient

CLAIM_SECONDS = 60

_inbox, _deliveries, _recipients, _organizations = (
    orm.processed_events, orm.deliveries, orm.recipients, orm.organizations
)

# The statements every event runs, built once with bound parameters:
# SQLAlchemy reuses their compiled form instead of building them anew.
EVENT_STATE = select(
    exists()
    .where(_inbox.c.event_id == bindparam("event_id"), _inbox.c.handler == bindparam("handler"))
    .label("handled"),
    exists().where(_deliveries.c.event_id == bindparam("event_id")).label("planned"),
)
RECIPIENTS_WITH_TIMEZONE = (
    select(_recipients, _organizations.c.timezone)
    .select_from(_recipients.outerjoin(_organizations, _organizations.c.id == _recipients.c.organization_id))
    .where(_recipients.c.organization_id == bindparam("organization_id"), _recipients.c.active == 1,
           _recipients.c.address.is_not(None))
    .order_by(_recipients.c.user_id)
)
PLAN = insert(_deliveries)
MARK_HANDLED = insert(_inbox)
FINISH = (
    update(_deliveries)
    .where(
        _deliveries.c.event_id == bindparam("k_event"),
        _deliveries.c.recipient_id == bindparam("k_recipient"),
        _deliveries.c.channel == bindparam("k_channel"),
    )
    .values(
        status=bindparam("v_status"),
        claimed_until=None,
        last_error=bindparam("v_error"),
        sent_at=bindparam("v_sent_at"),
    )
)


@dataclass(frozen=True)
class EventState:
    handled: bool  # recorded in the inbox: nothing to do
    planned: bool  # some delivery of it exists: an earlier try, or a copy of the event, planned it


@dataclass(frozen=True)
class PlannedDelivery:
    recipient_id: str
    channel: str
    status: DeliveryStatus
    recipient: Recipient | None  # None: the recipient is gone


class UnitOfWork:
    def __init__(self, session: Session):
        self.session = session

    # -- projection of identity's events ---------------------------------
    def project_organization(self, organization_id: str, data: dict) -> bool:
        """Keep the organisation as told, unless a later revision is already
        kept. True if it changed anything."""
        t = orm.organizations
        values = dict(timezone=data["timezone"], language=data["language"], revision=data["revision"])
        newer = update(t).where(t.c.id == organization_id, t.c.revision < data["revision"]).values(**values)
        if self.session.execute(newer).rowcount:
            return True
        if self.session.execute(select(t.c.id).where(t.c.id == organization_id)).first() is not None:
            return False
        if self._insert_once(insert(t).values(id=organization_id, **values)):
            return True
        return bool(self.session.execute(newer).rowcount)  # another event of it got in first

    def project_member(self, organization_id: str, data: dict) -> bool:
        """Keep a member as told (every role, contact points, supervisions),
        unless a later revision is already kept."""
        t, s = orm.recipients, orm.supervisions
        member_id = str(data["member_id"])
        values = dict(
            organization_id=organization_id, roles=",".join(sorted(data["roles"])), name=data["name"],
            channel="email", address=data["email"], phone=data["phone"], locale=data["language"],
            active=1 if data["active"] else 0, revision=data["revision"],
        )
        newer = update(t).where(t.c.user_id == member_id, t.c.revision < data["revision"]).values(**values)
        if not self.session.execute(newer).rowcount:
            if self.session.execute(select(t.c.user_id).where(t.c.user_id == member_id)).first() is not None:
                return False
            if not self._insert_once(insert(t).values(user_id=member_id, **values)) and \
                    not self.session.execute(newer).rowcount:
                return False  # another event of hers, as new or newer, got in first
        self.session.execute(delete(s).where(s.c.user_id == member_id))
        supervised = sorted({str(o) for o in data["supervised_organization_ids"]})
        if supervised:
            self.session.execute(insert(s), [{"user_id": member_id, "organization_id": o} for o in supervised])
        return True

    def member_revision(self, member_id: str) -> int:
        t = orm.recipients
        return self.session.execute(select(t.c.revision).where(t.c.user_id == member_id)).scalar() or 0

    def _insert_once(self, statement) -> bool:
        """Insert a row another worker may be inserting at the same moment
        (two events about one member handled side by side): False, and
        nothing written, if the other got there first."""
        try:
            with self.session.begin_nested():
                self.session.execute(statement)
        except IntegrityError:
            return False
        return True

    def supervisors_of(self, organization_id: str) -> list[Recipient]:
        """Active supervisors of the organisation, wherever they belong."""
        t, s = orm.recipients, orm.supervisions
        rows = self.session.execute(
            select(t).join(s, s.c.user_id == t.c.user_id)
            .where(s.c.organization_id == organization_id, t.c.active == 1).order_by(t.c.user_id)
        ).all()
        return [_recipient(x) for x in rows if "supervisor" in x.roles.split(",")]

    def recipients_with_timezone(self, organization_id: str) -> tuple[list[Recipient], str | None]:
        """The organisation's active recipients and its time zone, in one
        query (None for the zone when there is no recipient, or no zone)."""
        rows = self.session.execute(RECIPIENTS_WITH_TIMEZONE, {"organization_id": organization_id}).all()
        people = [_recipient(x) for x in rows]
        return people, (rows[0].timezone if rows else None)

    def recipient(self, user_id: str) -> Recipient | None:
        t = orm.recipients
        r = self.session.execute(select(t).where(t.c.user_id == user_id)).first()
        return _recipient(r) if r is not None and r.active and r.address is not None else None

    # -- inbox ------------------------------------------------------------
    def event_state(self, event_id: str, handler: str) -> EventState:
        """Whether the event is handled, and whether any delivery of it was
        planned, in one query."""
        row = self.session.execute(EVENT_STATE, {"event_id": event_id, "handler": handler}).one()
        return EventState(handled=bool(row.handled), planned=bool(row.planned))

    def mark_handled(self, event_id: str, handler: str) -> bool:
        """Record the event as handled (the inbox, ``servicekit.inbox``).
        False if a concurrent copy of it did so first: the whole transaction
        is then rolled back and the caller does its other writes again (this
        spares a savepoint every time)."""
        try:
            self.session.execute(
                MARK_HANDLED, {"event_id": event_id, "handler": handler, "processed_at": datetime.now(timezone.utc)}
            )
        except IntegrityError:
            self.session.rollback()
            return False
        return True

    # -- deliveries -------------------------------------------------------
    def plan_claimed(self, *, event: dict, recipients: list[Recipient], now: datetime) -> bool:
        """Create the deliveries of a brand-new event, already claimed by this
        worker (sending, first attempt), in one statement. False if any of
        them exists (a concurrent copy of the event planned it): the unique
        (event, recipient, channel) key refused the rows, nothing is written,
        and the whole transaction is rolled back."""
        if not recipients:
            return True
        try:
            self.session.execute(PLAN, [_claimed_row(event, r, now) for r in recipients])
        except IntegrityError:
            self.session.rollback()
            return False
        return True

    def plan_delivery(self, *, event: dict, recipient: Recipient, now: datetime) -> bool:
        """Create one delivery, claimed by this worker, unless it exists (a
        concurrent copy of the event planned it first: False). A savepoint
        keeps the rest of the transaction either way."""
        try:
            with self.session.begin_nested():
                self.session.execute(insert(orm.deliveries).values(**_claimed_row(event, recipient, now)))
        except IntegrityError:
            return False
        return True

    def deliveries_of(self, event_id: str) -> list[PlannedDelivery]:
        """Every delivery planned for the event, with its recipient as known
        now (None if gone), in the order they were planned."""
        d, r = orm.deliveries, orm.recipients
        rows = self.session.execute(
            select(d.c.recipient_id, d.c.channel, d.c.status, r.c.organization_id, d.c.recipient_role, r.c.address,
                   r.c.locale, r.c.active)
            .select_from(d.outerjoin(r, r.c.user_id == d.c.recipient_id))
            .where(d.c.event_id == event_id)
            .order_by(d.c.id)
        ).all()
        return [
            PlannedDelivery(
                x.recipient_id,
                x.channel,
                DeliveryStatus(x.status),
                Recipient(x.recipient_id, x.organization_id, x.recipient_role, x.channel, x.address, x.locale)
                if x.address is not None and x.active
                else None,
            )
            for x in rows
        ]

    def claim_unsent(self, event_id: str, now: datetime) -> set[tuple[str, str]]:
        """Take every delivery of the event that waits (pending, failed, or
        sending under an expired claim) in one statement, and return the
        (recipient, channel) of each. Only one worker wins a delivery; the
        claim of a worker that died expires after ``CLAIM_SECONDS``."""
        t = orm.deliveries
        rows = self.session.execute(
            update(t)
            .where(
                t.c.event_id == event_id,
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
            .returning(t.c.recipient_id, t.c.channel)
        ).all()
        return {(r.recipient_id, r.channel) for r in rows}

    def finish(self, event_id: str, attempts: list[Attempt], *, now: datetime) -> None:
        """Record how each attempt ended and release its claim, in one
        statement (executed once per attempt when there are several)."""
        if not attempts:
            return
        self.session.execute(
            FINISH,
            [
                {
                    "k_event": event_id,
                    "k_recipient": a.recipient_id,
                    "k_channel": a.channel,
                    "v_status": a.status.value,
                    "v_error": a.error,
                    "v_sent_at": now if a.status is DeliveryStatus.SENT else None,
                }
                for a in attempts
            ],
        )

    def deliveries_for_case(self, case_id: str) -> list:
        t = orm.deliveries
        rows = self.session.execute(select(t).where(t.c.case_id == case_id).order_by(t.c.id)).all()
        return [dict(r._mapping) for r in rows]

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()


def _recipient(row) -> Recipient:
    return Recipient(row.user_id, row.organization_id, "", row.channel, row.address, row.locale,
                     frozenset(r for r in row.roles.split(",") if r))


def _claimed_row(event: dict, recipient: Recipient, now: datetime) -> dict:
    """A delivery row as this worker plans it: claimed for its first attempt."""
    return dict(
        event_id=str(event["event_id"]),
        event_type=event["type"],
        organization_id=str(event["organization_id"]),
        case_id=str(event["case_id"]) if event.get("case_id") else None,
        recipient_id=recipient.user_id,
        recipient_role=recipient.role,
        channel=recipient.channel,
        status=DeliveryStatus.SENDING.value,
        attempts=1,
        last_error=None,
        claimed_until=now + timedelta(seconds=CLAIM_SECONDS),
        created_at=now,
        sent_at=None,
    )
