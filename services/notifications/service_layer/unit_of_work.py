"""The notifications service's statements: projections, notices, deliveries,
their log, acknowledgement links, spending and digests.

The unit of work never commits by itself: the handler says where each
transaction ends. Statements that run for every event are few and whole
(one insert of a notice's deliveries, one claim of everything due)."""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, bindparam, delete, exists, func, insert, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from servicekit import outbox
from services.notifications.adapters import orm
from services.notifications.domain.model import CaseFacts, DeliveryStatus, Planned, Recipient

CLAIM_SECONDS = 60
UNACKNOWLEDGED_DAYS = 7  # the digest counts the urgent notices of the last 7 days nobody acknowledged

_inbox, _deliveries, _recipients, _organizations = (
    orm.processed_events, orm.deliveries, orm.recipients, orm.organizations
)
_notices, _log, _acks, _cases = orm.notices, orm.notice_log, orm.acks, orm.cases


@dataclass(frozen=True)
class Organization:
    id: str
    timezone: str
    language: str | None
    code: str | None


@dataclass(frozen=True)
class Notice:
    id: str
    event_id: str
    event_type: str
    rule: str
    kind: str
    urgency: str
    organization_id: str
    case_id: str | None
    step_ref: str | None
    frozen: str
    rung: str | None
    created_at: datetime
    ack_due_at: datetime | None = None
    wake_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None


@dataclass(frozen=True)
class Claimed:
    """A delivery this worker holds the claim on, so that it alone sends it,
    with what sending needs: its notice, the recipient as known now (None if
    she left), her organisation, and her acknowledgement link's id."""

    id: int
    notice: Notice
    recipient_id: str
    recipient_role: str
    channel: str
    fallbacks: tuple[str, ...]
    recipient: Recipient | None
    organization: Organization | None
    ack_id: str | None = None
    ack_expires_at: datetime | None = None


@dataclass(frozen=True)
class Ack:
    id: str
    notice_id: str
    recipient_id: str
    expires_at: datetime
    used_at: datetime | None


# the statements every event runs, built once: SQLAlchemy reuses their compiled form
HANDLED = select(exists().where(_inbox.c.event_id == bindparam("event_id"), _inbox.c.handler == bindparam("handler")))
ORGANIZATION = select(_organizations.c.id, _organizations.c.timezone, _organizations.c.language,
                      _organizations.c.code).where(_organizations.c.id == bindparam("id"))
CASE = select(_cases).where(_cases.c.case_id == bindparam("id"))
PEOPLE = (select(_recipients).where(_recipients.c.organization_id == bindparam("id"), _recipients.c.active == 1)
          .order_by(_recipients.c.user_id))
SUPERVISORS = (
    select(_recipients).join(orm.supervisions, orm.supervisions.c.user_id == _recipients.c.user_id)
    .where(orm.supervisions.c.organization_id == bindparam("id"), _recipients.c.active == 1)
    .order_by(_recipients.c.user_id)
)
PLAN = insert(_deliveries)
LOG = insert(_log)
_IGNORING: dict = {}  # (dialect, table) -> INSERT ... ON CONFLICT DO NOTHING
FINISH = (
    update(_deliveries)
    .where(_deliveries.c.notice_id == bindparam("k_notice"), _deliveries.c.recipient_id == bindparam("k_recipient"),
           _deliveries.c.channel == bindparam("k_channel"))
    .values(status=bindparam("v_status"), claimed_until=None, sent_at=bindparam("v_sent_at"),
            provider_code=bindparam("v_code"), last_error=bindparam("v_error"))
)
_WAITING = (DeliveryStatus.PENDING.value, DeliveryStatus.FAILED.value)


class UnitOfWork:
    def __init__(self, session: Session):
        self.session = session

    # -- projection of identity's events ---------------------------------
    def project_organization(self, organization_id: str, data: dict) -> bool:
        """Keep the organisation as told, unless a later revision is already
        kept. True if it changed anything."""
        t = _organizations
        values = dict(timezone=data["timezone"], language=data["language"], revision=data["revision"],
                      code=data.get("code"))
        newer = update(t).where(t.c.id == organization_id, t.c.revision < data["revision"]).values(**values)
        if self.session.execute(newer).rowcount:
            return True
        if self.session.execute(select(t.c.id).where(t.c.id == organization_id)).first() is not None:
            return False
        if self._insert_ignore(t, dict(id=organization_id, **values)):
            return True
        return bool(self.session.execute(newer).rowcount)  # another event of it got in first

    def project_member(self, organization_id: str, data: dict) -> bool:
        """Keep a member as told (every role, contact points, supervisions,
        notification settings), unless a later revision is already kept."""
        t, s = _recipients, orm.supervisions
        member_id = str(data["member_id"])
        quiet = data.get("quiet_hours") or {}
        digest = data.get("digest") or {}
        values = dict(
            organization_id=organization_id, roles=",".join(sorted(data["roles"])), name=data["name"],
            channel="email", address=data["email"], phone=data["phone"], locale=data["language"],
            active=1 if data["active"] else 0, revision=data["revision"],
            whatsapp_opt_in=1 if data.get("whatsapp_opt_in") else 0,
            quiet_start=quiet.get("start"), quiet_end=quiet.get("end"),
            digest_weekday=digest.get("weekday"), digest_hour=digest.get("hour"),
            preferences=json.dumps(data.get("preferences") or {}, sort_keys=True),
        )
        newer = update(t).where(t.c.user_id == member_id, t.c.revision < data["revision"]).values(**values)
        if not self.session.execute(newer).rowcount:
            if self.session.execute(select(t.c.user_id).where(t.c.user_id == member_id)).first() is not None:
                return False
            if not self._insert_ignore(t, dict(user_id=member_id, **values)) and \
                    not self.session.execute(newer).rowcount:
                return False  # another event of hers, as new or newer, got in first
        self.session.execute(delete(s).where(s.c.user_id == member_id))
        supervised = sorted({str(o) for o in data["supervised_organization_ids"]})
        if supervised:
            self.session.execute(insert(s), [{"user_id": member_id, "organization_id": o} for o in supervised])
        return True

    def member_revision(self, member_id: str) -> int:
        t = _recipients
        return self.session.execute(select(t.c.revision).where(t.c.user_id == member_id)).scalar() or 0

    def _insert_ignore(self, table, values: dict) -> bool:
        """Insert a row unless one with its key exists, in one statement
        (``ON CONFLICT DO NOTHING``: no savepoint); True if inserted."""
        dialect = self.session.get_bind().dialect.name
        statement = _IGNORING.get((dialect, table.name))
        if statement is None:
            statement = (pg_insert if dialect == "postgresql" else sqlite_insert)(table).on_conflict_do_nothing()
            _IGNORING[(dialect, table.name)] = statement  # built once: its compiled form is reused
        return bool(self.session.execute(statement, values).rowcount)

    def organization(self, organization_id: str) -> Organization | None:
        row = self.session.execute(ORGANIZATION, {"id": organization_id}).first()
        return Organization(row.id, row.timezone, row.language, row.code) if row else None

    def people_of(self, organization_id: str) -> list[Recipient]:
        return [_recipient(x) for x in self.session.execute(PEOPLE, {"id": organization_id}).all()]

    def supervisors_of(self, organization_id: str) -> list[Recipient]:
        """Active supervisors of the organisation, wherever they belong."""
        rows = self.session.execute(SUPERVISORS, {"id": organization_id}).all()
        return [_recipient(x) for x in rows if "supervisor" in x.roles.split(",")]

    def presidents(self) -> list[tuple[Recipient, Organization | None]]:
        """Every active president, with her organisation."""
        t, o = _recipients, _organizations
        rows = self.session.execute(
            select(t, o.c.timezone.label("org_timezone"), o.c.language.label("org_language"), o.c.code)
            .select_from(t.outerjoin(o, o.c.id == t.c.organization_id))
            .where(t.c.active == 1, t.c.roles.like("%president%")).order_by(t.c.user_id)
        ).all()
        return [
            (_recipient(x), Organization(x.organization_id, x.org_timezone, x.org_language, x.code)
             if x.org_timezone else None)
            for x in rows if "president" in x.roles.split(",")
        ]

    # -- the facts of a case ----------------------------------------------
    # A case's events come on separate queues, so their order is not given:
    # a case lead or a change of risk may be heard of before the opening.
    # Each kind of fact keeps the time of the event that set it, and whichever
    # event comes first makes the row.
    def case_opened(self, case_id: str, organization_id: str, survivor_code: str, opened_by: str,
                    risk_level: str | None, at: datetime) -> None:
        c = _cases
        if self._insert_ignore(c, dict(
            case_id=case_id, organization_id=organization_id, survivor_code=survivor_code,
            focal_point_id=opened_by, risk_level=risk_level, closed=0, state_changed_at=at,
        )):
            return
        self.session.execute(update(c).where(c.c.case_id == case_id).values(
            survivor_code=survivor_code, focal_point_id=opened_by))
        self.session.execute(update(c).where(c.c.case_id == case_id, c.c.state_changed_at.is_(None))
                             .values(risk_level=risk_level, state_changed_at=at))

    def case_changed(self, case_id: str, organization_id: str, at: datetime, **values) -> None:
        """Risk or open/closed, unless a later event of the case was kept already."""
        c = _cases
        done = self.session.execute(
            update(c).where(c.c.case_id == case_id, or_(c.c.state_changed_at.is_(None), c.c.state_changed_at <= at))
            .values(state_changed_at=at, **values)
        ).rowcount
        if not done and not self._case_known(case_id):
            if not self._insert_ignore(c, dict(case_id=case_id, organization_id=organization_id,
                                               state_changed_at=at, **{"closed": 0, **values})):
                self.case_changed(case_id, organization_id, at, **values)

    def case_lead(self, case_id: str, organization_id: str, lead: str | None, at: datetime) -> None:
        c = _cases
        done = self.session.execute(
            update(c).where(c.c.case_id == case_id, or_(c.c.lead_changed_at.is_(None), c.c.lead_changed_at <= at))
            .values(case_lead_id=lead, lead_changed_at=at)
        ).rowcount
        if not done and not self._case_known(case_id):
            if not self._insert_ignore(c, dict(case_id=case_id, organization_id=organization_id, closed=0,
                                               case_lead_id=lead, lead_changed_at=at)):
                self.case_lead(case_id, organization_id, lead, at)

    def _case_known(self, case_id: str) -> bool:
        return self.session.execute(select(exists().where(_cases.c.case_id == case_id))).scalar()

    def case(self, case_id: str) -> CaseFacts | None:
        row = self.session.execute(CASE, {"id": case_id}).first()
        if row is None:
            return None
        return CaseFacts(row.case_id, row.survivor_code, row.focal_point_id, row.case_lead_id, row.risk_level,
                         bool(row.closed))

    # -- inbox ------------------------------------------------------------
    def handled(self, event_id: str, handler: str) -> bool:
        return self.session.execute(HANDLED, {"event_id": event_id, "handler": handler}).scalar()

    def mark_handled(self, event_id: str, handler: str) -> bool:
        """Record the event as handled. False if a concurrent copy of it did
        so first: the whole transaction is then rolled back."""
        try:
            self.session.execute(insert(_inbox).values(
                event_id=event_id, handler=handler, processed_at=datetime.now(timezone.utc)))
        except IntegrityError:
            self.session.rollback()
            return False
        return True

    def mark_handled_or_skip(self, event_id: str, handler: str) -> None:
        """Record the event as handled, keeping the rest of the transaction
        if a concurrent copy recorded it first."""
        self._insert_ignore(_inbox, dict(event_id=event_id, handler=handler, processed_at=datetime.now(timezone.utc)))

    # -- notices ------------------------------------------------------------
    def insert_notice_once(self, notice: Notice) -> bool:
        return self._insert_ignore(_notices, notice.__dict__)

    def notice(self, notice_id: str) -> Notice:
        row = self.session.execute(select(_notices).where(_notices.c.id == notice_id)).one()
        return Notice(**dict(row._mapping))

    def find_notice(self, notice_id: str) -> Notice | None:
        found = self._notices({notice_id})
        return found[0] if found else None

    def update_notice(self, notice_id: str, **values) -> None:
        self.session.execute(update(_notices).where(_notices.c.id == notice_id).values(**values))

    def notices_to_wake(self, now: datetime, limit: int) -> list[tuple[str, datetime]]:
        n = _notices
        return [(r.id, r.wake_at) for r in self.session.execute(
            select(n.c.id, n.c.wake_at).where(n.c.wake_at <= now).order_by(n.c.wake_at).limit(limit)
        ).all()]

    def take_notice(self, notice_id: str, wake_at: datetime) -> Notice | None:
        """Take the notice for this wake-up, unless another replica did."""
        n = _notices
        taken = self.session.execute(
            update(n).where(n.c.id == notice_id, n.c.wake_at == wake_at).values(wake_at=None)
        ).rowcount
        return self.notice(notice_id) if taken else None

    def set_wake(self, notice_id: str, at: datetime | None) -> None:
        self.update_notice(notice_id, wake_at=at)

    def told(self, notice_id: str) -> set[tuple[str, str]]:
        d = _deliveries
        return {(r.recipient_id, r.channel) for r in self.session.execute(
            select(d.c.recipient_id, d.c.channel).where(d.c.notice_id == notice_id)).all()}

    def log(self, notice: Notice, lines: list[dict], now: datetime) -> None:
        self.session.execute(LOG, [
            {"notice_id": notice.id, "case_id": notice.case_id, "organization_id": notice.organization_id, "at": now,
             "rung": None, "recipient_role": None, "channel": None, "code": None, **line}
            for line in lines
        ])

    def stage(self, envelope: dict) -> None:
        outbox.stage(self.session, orm.outbox, envelope, source="notifications")

    # -- deliveries -----------------------------------------------------------
    def plan_deliveries(self, notice: Notice, planned: list[Planned], now: datetime) -> None:
        if not planned:
            return
        self.session.execute(insert(_deliveries), [
            _delivery_row(notice, p.recipient.user_id, p.recipient.role, p.channel, p.fallbacks, p.not_before, now)
            for p in planned
        ])

    def plan_claimed(self, notice: Notice, planned: list[Planned], now: datetime, *,
                     organization: Organization | None, acks: dict[str, tuple[str, datetime]]) -> list[Claimed]:
        """Plan a new notice's deliveries in one insert, those due now
        already claimed by this worker (the notice is new, so nobody else
        can hold them), and return the claimed ones with what sending needs,
        without reading them back."""
        if not planned:
            return []
        claimed_until = now + timedelta(seconds=CLAIM_SECONDS)
        rows, claimed = [], []
        for p in planned:
            row = _delivery_row(notice, p.recipient.user_id, p.recipient.role, p.channel, p.fallbacks, p.not_before,
                                now)
            if p.not_before is None:
                row.update(status=DeliveryStatus.SENDING.value, attempts=1, claimed_until=claimed_until)
                ack_id, expires = acks.get(p.recipient.user_id, (None, None))
                claimed.append(Claimed(0, notice, p.recipient.user_id, p.recipient.role, p.channel, p.fallbacks,
                                       p.recipient, organization, ack_id, expires))
            rows.append(row)
        self.session.execute(PLAN, rows)
        return claimed

    def plan_fallback(self, c: Claimed, channel: str, rest: tuple[str, ...], now: datetime) -> bool:
        return self._insert_ignore(_deliveries,
                                   _delivery_row(c.notice, c.recipient_id, c.recipient_role, channel, rest, None, now))

    def claim_due(self, notice_ids: list[str], now: datetime, *, only: list[tuple[str, str]] | None = None
                  ) -> list[Claimed]:
        """Take every delivery of the notices that is due now (pending past
        its hold, failed, or sending under an expired claim), in one
        statement, and return them with what sending needs. Only one worker
        wins a delivery."""
        d = _deliveries
        due = or_(
            and_(d.c.status.in_(_WAITING), or_(d.c.not_before.is_(None), d.c.not_before <= now)),
            and_(d.c.status == DeliveryStatus.SENDING.value, d.c.claimed_until < now),
        )
        where = [d.c.notice_id.in_(notice_ids), due]
        if only:
            where.append(tuple_(d.c.recipient_id, d.c.channel).in_(only))
        ids = [r.id for r in self.session.execute(
            update(d).where(*where).values(
                status=DeliveryStatus.SENDING.value, claimed_until=now + timedelta(seconds=CLAIM_SECONDS),
                attempts=d.c.attempts + 1,
            ).returning(d.c.id)
        ).all()]
        return self._claimed(ids)

    def unacknowledged_sent(self, notice_id: str) -> list[Claimed]:
        """The notice's sent deliveries that still have a channel to fall back on."""
        d = _deliveries
        ids = [r.id for r in self.session.execute(
            select(d.c.id).where(d.c.notice_id == notice_id, d.c.status == DeliveryStatus.SENT.value,
                                 d.c.fallbacks.is_not(None), d.c.fallbacks != "")
        ).all()]
        return self._claimed(ids)

    def _claimed(self, ids: list[int]) -> list[Claimed]:
        if not ids:
            return []
        d, r, o, a = _deliveries, _recipients, _organizations, _acks
        rows = self.session.execute(
            select(d.c.id, d.c.notice_id, d.c.recipient_id, d.c.recipient_role, d.c.channel, d.c.fallbacks,
                   r, o.c.timezone.label("org_timezone"), o.c.language.label("org_language"), o.c.code,
                   o.c.id.label("org_id"), a.c.id.label("ack_id"), a.c.expires_at.label("ack_expires_at"))
            .select_from(
                d.outerjoin(r, r.c.user_id == d.c.recipient_id)
                .outerjoin(o, o.c.id == d.c.organization_id)
                .outerjoin(a, and_(a.c.notice_id == d.c.notice_id, a.c.recipient_id == d.c.recipient_id))
            ).where(d.c.id.in_(ids)).order_by(d.c.id)
        ).all()
        notices = {n.id: n for n in self._notices({x.notice_id for x in rows})}
        claimed = []
        for x in rows:
            organization = Organization(x.org_id, x.org_timezone, x.org_language, x.code) if x.org_id else None
            if x.recipient_role == "organization":
                recipient = Recipient(x.recipient_id, x.recipient_id, "organization", "webhook", None,
                                      x.org_language or "es") if organization else None
            elif x.user_id is not None and x.active:
                recipient = _recipient(x, role=x.recipient_role)
            else:
                recipient = None
            claimed.append(Claimed(
                x.id, notices[x.notice_id], x.recipient_id, x.recipient_role, x.channel,
                tuple(c for c in (x.fallbacks or "").split(",") if c), recipient, organization,
                x.ack_id, x.ack_expires_at,
            ))
        return claimed

    def _notices(self, ids: set[str]) -> list[Notice]:
        rows = self.session.execute(select(_notices).where(_notices.c.id.in_(ids))).all()
        return [Notice(**dict(r._mapping)) for r in rows]

    def finish(self, c: Claimed, status: DeliveryStatus, *, code: str | None, sent_at: datetime | None) -> None:
        """How one delivery ended, by its key (notice, recipient, channel)."""
        self.session.execute(FINISH, {
            "k_notice": c.notice.id, "k_recipient": c.recipient_id, "k_channel": c.channel,
            "v_status": status.value, "v_sent_at": sent_at, "v_code": code[:32] if code else None,
            "v_error": None if status is DeliveryStatus.SENT else (code[:64] if code else None),
        })

    def failed_due(self, notice_ids: list[str], now: datetime) -> bool:
        """Whether any delivery of the notices is left to try now (failed,
        pending past its hold, or held by another worker's claim)."""
        d = _deliveries
        return bool(self.session.execute(select(exists().where(
            d.c.notice_id.in_(notice_ids),
            or_(d.c.status.in_([DeliveryStatus.FAILED.value, DeliveryStatus.SENDING.value]),
                and_(d.c.status == DeliveryStatus.PENDING.value,
                     or_(d.c.not_before.is_(None), d.c.not_before <= now))),
        ))).scalar())

    def has_due(self, notice_id: str, now: datetime) -> bool:
        d = _deliveries
        return bool(self.session.execute(select(exists().where(
            d.c.notice_id == notice_id, d.c.status.in_(_WAITING),
            or_(d.c.not_before.is_(None), d.c.not_before <= now),
        ))).scalar())

    def next_hold(self, notice_id: str, now: datetime) -> datetime | None:
        d = _deliveries
        return self.session.execute(select(func.min(d.c.not_before)).where(
            d.c.notice_id == notice_id, d.c.status == DeliveryStatus.PENDING.value, d.c.not_before > now,
        )).scalar()

    # -- spending -------------------------------------------------------------
    def reserve_spending(self, organization_id: str, month: str, channel: str, cap: int) -> int | None:
        """Count one more paid message of the month, if under ``cap``: the
        new count, or None when the cap is reached."""
        s = orm.spending
        key = and_(s.c.organization_id == organization_id, s.c.month == month, s.c.channel == channel)
        if cap <= 0:
            return None
        if self.session.execute(update(s).where(key, s.c.count < cap).values(count=s.c.count + 1)).rowcount:
            return self.session.execute(select(s.c.count).where(key)).scalar()
        if self._insert_ignore(s, dict(organization_id=organization_id, month=month, channel=channel, count=1)):
            return 1
        if self.session.execute(update(s).where(key, s.c.count < cap).values(count=s.c.count + 1)).rowcount:
            return self.session.execute(select(s.c.count).where(key)).scalar()
        return None

    def release_spending(self, organization_id: str, month: str, channel: str) -> None:
        s = orm.spending
        self.session.execute(update(s).where(
            s.c.organization_id == organization_id, s.c.month == month, s.c.channel == channel, s.c.count > 0,
        ).values(count=s.c.count - 1))

    # -- acknowledgements ----------------------------------------------------
    def create_acks(self, notice_id: str, recipient_ids: list[str], expires_at: datetime, *,
                    new_notice: bool = False) -> dict[str, tuple[str, datetime]]:
        """An acknowledgement link for each person who has none for the
        notice yet (a new notice has none: nothing to read); returns the new
        ones, person -> (id, expiry)."""
        known = set() if new_notice else {r.recipient_id for r in self.session.execute(
            select(_acks.c.recipient_id).where(_acks.c.notice_id == notice_id)).all()}
        made = {r: (secrets.token_bytes(8).hex(), expires_at) for r in recipient_ids if r not in known}
        if made:
            self.session.execute(insert(_acks), [
                {"id": ack_id, "notice_id": notice_id, "recipient_id": r, "expires_at": expires, "used_at": None}
                for r, (ack_id, expires) in made.items()
            ])
        return made

    def ack(self, ack_id: str) -> tuple[Ack, str | None] | None:
        a, n, c = _acks, _notices, _cases
        row = self.session.execute(
            select(a, c.c.survivor_code).select_from(
                a.join(n, n.c.id == a.c.notice_id).outerjoin(c, c.c.case_id == n.c.case_id)
            ).where(a.c.id == ack_id)
        ).first()
        if row is None:
            return None
        return Ack(row.id, row.notice_id, row.recipient_id, row.expires_at, row.used_at), row.survivor_code

    def use_ack(self, ack_id: str, now: datetime) -> bool:
        a = _acks
        return bool(self.session.execute(
            update(a).where(a.c.id == ack_id, a.c.used_at.is_(None), a.c.expires_at > now).values(used_at=now)
        ).rowcount)

    def acknowledge_notices(self, notice: Notice, by: str, now: datetime) -> list[Notice]:
        """The notice, and every open notice of the same step of the same
        case, acknowledged: none of them climbs any more."""
        n = _notices
        same = n.c.id == notice.id
        if notice.case_id and notice.step_ref:
            same = or_(same, and_(n.c.case_id == notice.case_id, n.c.step_ref == notice.step_ref))
        ids = [r.id for r in self.session.execute(
            update(n).where(same, n.c.acknowledged_at.is_(None))
            .values(acknowledged_at=now, acknowledged_by=by, ack_due_at=None).returning(n.c.id)
        ).all()]
        return self._notices(set(ids)) if ids else []

    def stop_climbs(self, case_id: str, step_ref: str | None) -> list[Notice]:
        """Every climbing notice of the case (of one step, if given) stops."""
        n = _notices
        where = [n.c.case_id == case_id, n.c.ack_due_at.is_not(None)]
        if step_ref:
            where.append(n.c.step_ref == step_ref)
        ids = [r.id for r in self.session.execute(
            update(n).where(*where).values(ack_due_at=None).returning(n.c.id)).all()]
        return self._notices(set(ids)) if ids else []

    def open_ack_for_phone(self, phone: str, case_code: str | None, now: datetime) -> tuple[Ack, str | None] | None:
        a, n, c, r = _acks, _notices, _cases, _recipients
        query = (
            select(a, c.c.survivor_code)
            .select_from(a.join(n, n.c.id == a.c.notice_id).join(r, r.c.user_id == a.c.recipient_id)
                         .outerjoin(c, c.c.case_id == n.c.case_id))
            .where(r.c.phone == phone, r.c.active == 1, a.c.used_at.is_(None), a.c.expires_at > now,
                   n.c.acknowledged_at.is_(None))
            .order_by(n.c.created_at.desc()).limit(1)
        )
        if case_code:
            query = query.where(c.c.survivor_code == case_code)
        row = self.session.execute(query).first()
        if row is None:
            return None
        return Ack(row.id, row.notice_id, row.recipient_id, row.expires_at, row.used_at), row.survivor_code

    def unacknowledged(self, organization_id: str, now: datetime | None = None) -> int:
        n = _notices
        since = (now or datetime.now(timezone.utc)) - timedelta(days=UNACKNOWLEDGED_DAYS)
        return self.session.execute(select(func.count()).select_from(n).where(
            n.c.organization_id == organization_id, n.c.urgency != "normal", n.c.acknowledged_at.is_(None),
            n.c.created_at >= since,
        )).scalar()

    # -- digests ----------------------------------------------------------------
    def digest_sent(self, recipient_id: str, week: str) -> bool:
        g = orm.digests
        return bool(self.session.execute(
            select(exists().where(g.c.recipient_id == recipient_id, g.c.week == week))).scalar())

    def insert_digest_once(self, recipient_id: str, week: str, notice_id: str) -> bool:
        return self._insert_ignore(orm.digests, dict(recipient_id=recipient_id, week=week, notice_id=notice_id))

    # -- a case's history ----------------------------------------------------------
    def deliveries_for_case(self, case_id: str) -> list[dict]:
        d, n = _deliveries, _notices
        rows = self.session.execute(
            select(d, n.c.kind).select_from(d.outerjoin(n, n.c.id == d.c.notice_id))
            .where(d.c.case_id == case_id).order_by(d.c.id)
        ).all()
        return [{**dict(r._mapping), "kind": r.kind or r.event_type} for r in rows]

    def log_for_case(self, case_id: str) -> list[dict]:
        g, n = _log, _notices
        rows = self.session.execute(
            select(g, n.c.kind).select_from(g.join(n, n.c.id == g.c.notice_id))
            .where(g.c.case_id == case_id).order_by(g.c.id)
        ).all()
        return [dict(r._mapping) for r in rows]

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()


def _recipient(row, role: str = "") -> Recipient:
    return Recipient(
        row.user_id, row.organization_id, role, row.channel, row.address, row.locale,
        frozenset(r for r in row.roles.split(",") if r), phone=row.phone,
        whatsapp_opt_in=bool(row.whatsapp_opt_in), quiet_start=row.quiet_start, quiet_end=row.quiet_end,
        digest_weekday=row.digest_weekday, digest_hour=row.digest_hour,
        preferences=json.loads(row.preferences) if row.preferences else {},
    )


def _delivery_row(notice: Notice, recipient_id: str, role: str, channel: str, fallbacks: tuple[str, ...],
                  not_before: datetime | None, now: datetime) -> dict:
    return dict(
        event_id=notice.event_id, event_type=notice.event_type, organization_id=notice.organization_id,
        case_id=notice.case_id, recipient_id=recipient_id, recipient_role=role, channel=channel,
        status=DeliveryStatus.PENDING.value, attempts=0, last_error=None, claimed_until=None, created_at=now,
        sent_at=None, notice_id=notice.id, not_before=not_before, fallbacks=",".join(fallbacks) or None,
        provider_code=None,
    )
