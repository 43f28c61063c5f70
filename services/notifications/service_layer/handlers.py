"""What the notifications service does with what it hears.

An event (a case's, or the service's own ``notice_due``) is handled in two
short transactions however many people it reaches, and nothing is held open
while a provider talks:

1. **plan and claim** (one transaction): the inbox check; the case facts the
   event carries; for every rule that matches it, a *notice* with the rule
   frozen into it (a later change of rules or people does not rewrite it),
   its deliveries (who, on which channel, with which channels left to fall
   back on, held until her quiet hours end unless critical), and the
   acknowledgement links of urgent ones; then every delivery due now is
   claimed by this worker, and SMS/WhatsApp messages are counted against the
   organisation's monthly cap (over it: the next channel, e-mail last);
2. the claimed deliveries are rendered and sent, outside any transaction;
3. **record** (one transaction): each outcome, one log line per attempt; a
   refusal (or, for an urgent message, any failure) goes on at once to the
   next channel of its chain; when nothing due is left unsent, the event is
   marked handled. A delivery that failed and has no channel left raises
   ``DeliveryFailed``: the event is tried again with backoff, then
   dead-lettered, and a replay sends what is still unsent.

Nobody excluded from a case (a conflict of interest) is told about it.
Exclusions never travel in events, so before an event of a case is planned
(an opening only when it is heard of late: ``_asks``), before a climb, and
before what a notice has due is sent (a release after quiet hours, a retry),
the cases service is asked which people of the organisation and its
supervisors are excluded (``Env.excluded``, asked with
every one of them, before anything is written); they are left out as if the
rules did not name them, a delivery planned for one of them before she was
excluded is cancelled unsent, and nothing is logged of it. If cases cannot
answer, the event (or the climb) is tried again later: nothing goes out
unchecked.

Exactly once per (notice, recipient, channel): the notice's id is derived
from (event, rule), the delivery's key is unique, and a delivery is claimed
before it is sent (the claim of a worker that died expires).

The timer ``wake`` looks at notices whose time came: an urgent notice nobody
acknowledged climbs one rung of its ladder (case lead, president,
supervisor), once per rung, and deliveries held by quiet hours are released;
either way it stages a ``notice_due`` event, which the service then handles
as above, with the same retries and dead letters.
"""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Protocol
from zoneinfo import ZoneInfo

from contracts.events import build_event
from services.notifications.adapters.channels.base import (
    ChannelSender, Outgoing, PermanentRejection, TransientFailure,
)
from services.notifications.domain import acks, model, schedule
from services.notifications.domain.model import DeliveryStatus, Planned, Recipient
from services.notifications.domain.rules import Rule, Rules, rule_from_json, rule_to_json
from services.notifications.service_layer.unit_of_work import Claimed, Notice, Organization, UnitOfWork

log = logging.getLogger(__name__)

NOTICE_NAMESPACE = uuid.UUID("5b0c1f9e-2d7a-4c83-9e41-7a6d0b3c2f18")
CASE_FACT_EVENTS = ("case_opened", "risk_changed", "case_lead_assigned", "case_closed", "case_reopened")


class Observer:
    """What the handlers report for the operators' metrics; the service
    gives one backed by prometheus-client. Labels are channels, kinds,
    rungs and organisations: never a case or a person."""

    def delivery(self, channel: str, kind: str, outcome: str) -> None: ...
    def latency(self, channel: str, kind: str, seconds: float) -> None: ...
    def acknowledged(self, rung: str) -> None: ...
    def escalated(self, rung: str) -> None: ...
    def capped(self, organization_id: str, channel: str) -> None: ...
    def spend(self, organization_id: str, channel: str, count: int, cap: int) -> None: ...
    def no_channel(self, kind: str, reason: str) -> None: ...
    def ack_refused(self, reason: str) -> None: ...


class RulesSource(Protocol):
    @property
    def current(self) -> Rules: ...


class Renderer(Protocol):
    def render(self, kind: str, channel: str, locale: str, *, fallback_locale: str, values: dict) -> Outgoing: ...


@dataclass
class Env:
    """Everything a handler needs besides the unit of work."""

    rules: RulesSource
    renderer: Renderer
    senders: dict[str, ChannelSender]
    ack_keys: acks.AckKeys
    public_url: str
    observer: Observer = field(default_factory=Observer)
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    source: str = "notifications"
    # (organization_id, case_id, candidate ids) -> those excluded from the case; raises
    # DeliveryFailed when it cannot be known now. The service asks cases; by default nobody
    excluded: Callable[[str, str, list[str]], set[str]] = lambda organization_id, case_id, candidates: set()
    # an opening heard of later than this after it happened is checked for exclusions too
    late_opening: timedelta = timedelta(seconds=10)

    def link(self, case_id: str | None) -> str | None:
        return f"{self.public_url.rstrip('/')}/console/cases/{case_id}" if case_id else None

    def ack_link(self, token: str) -> str:
        return f"{self.public_url.rstrip('/')}/a/{token}"


def notice_id(event_id: str, rule_name: str) -> str:
    return str(uuid.uuid5(NOTICE_NAMESPACE, f"{event_id}:{rule_name}"))


# -- identity's events ----------------------------------------------------------

def project_organization(uow: UnitOfWork, event: dict, handler: str) -> bool:
    """An organisation as identity announced it, once per event; False if
    the event was already handled."""
    if not uow.mark_handled(str(event["event_id"]), handler):
        return False
    uow.project_organization(str(event["organization_id"]), event["data"])
    uow.commit()
    return True


def project_member(uow: UnitOfWork, event: dict, handler: str) -> bool:
    """A member as identity announced her (every role, contact points,
    language, supervisions and notification settings), once per event."""
    if not uow.mark_handled(str(event["event_id"]), handler):
        return False
    uow.project_member(str(event["organization_id"]), event["data"])
    uow.commit()
    return True


# -- events of cases ----------------------------------------------------------------

def handle_event(uow: UnitOfWork, env: Env, event: dict, handler: str) -> bool:
    """Tell whoever the rules name about a case's event (see the module's
    docstring). Returns False for an event already handled; raises
    ``DeliveryFailed`` while a delivery is left to try again."""
    event_id, now = str(event["event_id"]), env.now()
    if uow.handled(event_id, handler):
        uow.rollback()
        return False
    organization_id = str(event["organization_id"])
    org = uow.organization(organization_id)
    rules = env.rules.current
    matched = sorted(rules.matching(event["type"], event["data"], org.code if org else None),
                     key=lambda r: -model.URGENCIES.index(r.urgency))
    case_id = str(event["case_id"]) if event.get("case_id") else None
    if matched:
        people, supervisors = uow.people_of(organization_id), uow.supervisors_of(organization_id)
        # asked before anything is written (see _asks)
        excluded = _excluded(uow, env, organization_id, case_id, people + supervisors) \
            if case_id and _asks(env, event, now) else frozenset()
    _project_case(uow, event)
    _stop_climbs(uow, event, now)
    ids = []
    if matched:
        case = uow.case(case_id) if case_id else None
        if case_id and (case is None or case.survivor_code is None):
            # heard of before the case's opening (another queue): its code, the
            # one thing a message shows, is not known yet; try again shortly
            uow.rollback()
            raise model.CaseNotKnownYet("the case's opening has not arrived yet")
        context = _Context(org=org, case=case, people=people, supervisors=supervisors, rules=rules,
                           excluded=excluded)
        told: set[tuple[str, str]] = set()
        claimed: list[Claimed] = []
        fresh: set[str] = set()
        for rule in matched:
            ids.append(_plan_notice(uow, env, rule, event, context, told, now, claim_into=claimed, fresh=fresh))
        return _send(uow, env, ids, inbox=(event_id, handler), occurred_at=event["occurred_at"],
                     planned=(claimed, fresh), excluded=excluded)
    return _send(uow, env, ids, inbox=(event_id, handler), occurred_at=event["occurred_at"])


def handle_notice_due(uow: UnitOfWork, env: Env, event: dict, handler: str) -> bool:
    """Send what a notice has due now (a climb, a release after quiet hours,
    a digest): the service's own ``notice_due`` event. Who is excluded from
    the notice's case is asked again first: a message held by quiet hours
    is not released to someone excluded since it was planned."""
    event_id, nid = str(event["event_id"]), str(event["data"]["notice_id"])
    if uow.handled(event_id, handler):
        uow.rollback()
        return False
    notice = uow.find_notice(nid)
    excluded: frozenset[str] = frozenset()
    if notice is not None and notice.case_id is not None:
        people = uow.people_of(notice.organization_id) + uow.supervisors_of(notice.organization_id)
        excluded = _excluded(uow, env, notice.organization_id, notice.case_id, people)
    return _send(uow, env, [nid], inbox=(event_id, handler), occurred_at=event["occurred_at"],
                 excluded=excluded)


def _asks(env: Env, event: dict, now: datetime) -> bool:
    """Whether cases is asked who is excluded before an event of a case is
    told: always, but for an opening heard of at once. A case gains an
    exclusion only after it is opened, and an opening is normally told
    within a second, so asking then would only cost every new case a call
    (the intake's latency target); an opening heard of late (this service
    was away, behind, or the event is replayed) may follow an exclusion."""
    return event["type"] != "case_opened" or now - event["occurred_at"] > env.late_opening


def _excluded(uow: UnitOfWork, env: Env, organization_id: str, case_id: str,
              candidates: list[Recipient]) -> frozenset[str]:
    """Who among ``candidates`` is excluded from the case, asked of cases with
    every one of them, so that the question singles nobody out. The read
    transaction ends first: nothing is held open while cases answers.
    ``DeliveryFailed`` if it cannot answer (tried again later)."""
    uow.rollback()
    return frozenset(env.excluded(organization_id, case_id, sorted({p.user_id for p in candidates})))


def _project_case(uow: UnitOfWork, event: dict) -> None:
    """Keep the few facts of a case a message needs, from its own events."""
    kind, data = event["type"], event["data"]
    if kind not in CASE_FACT_EVENTS or not event.get("case_id"):
        return
    case_id, organization_id, at = str(event["case_id"]), str(event["organization_id"]), event["occurred_at"]
    if kind == "case_opened":
        uow.case_opened(case_id, organization_id, data["survivor_code"], str(data["opened_by"]),
                        data.get("risk_level"), at)
    elif kind == "risk_changed":
        uow.case_changed(case_id, organization_id, at, risk_level=data["risk_level"])
    elif kind == "case_lead_assigned":
        lead = data.get("case_lead_id")
        uow.case_lead(case_id, organization_id, str(lead) if lead else None, at)
    else:
        uow.case_changed(case_id, organization_id, at, closed=1 if kind == "case_closed" else 0)


def _stop_climbs(uow: UnitOfWork, event: dict, now: datetime) -> None:
    """A step done stops the climb of its notices; a case closed, of all of its."""
    if event["type"] not in ("step_completed", "case_closed") or not event.get("case_id"):
        return
    step_ref = event["data"].get("step_ref") if event["type"] == "step_completed" else None
    for notice in uow.stop_climbs(str(event["case_id"]), step_ref):
        uow.log(notice, [dict(step="stopped", rung=notice.rung,
                              code="step_done" if step_ref else "case_closed")], now)


@dataclass
class _Context:
    org: Organization | None
    case: model.CaseFacts | None
    people: list[Recipient]
    supervisors: list[Recipient]
    rules: Rules
    excluded: frozenset[str] = frozenset()  # never told of the case, and nothing logged of them

    @property
    def timezone(self) -> str:
        return self.org.timezone if self.org and self.org.timezone else "UTC"

    def webhook_url(self) -> str | None:
        return self.rules.webhook_url(self.org.code) if self.org and self.org.code else None


def _values(event: dict, case: model.CaseFacts | None, tz_name: str, env: Env, extra: dict | None = None) -> dict:
    """What a notice's messages may say: the case code, a link, a due time in
    the organisation's zone, the rung. Never anything else about the case."""
    data = event.get("data") or {}
    due = data.get("due_at")
    if isinstance(due, str):
        due = datetime.fromisoformat(due)
    values = {
        "case_code": case.survivor_code if case else data.get("survivor_code"),
        "link": env.link(str(event["case_id"]) if event.get("case_id") else None),
        "due_at": due.astimezone(ZoneInfo(tz_name)).strftime("%Y-%m-%d %H:%M") if due else None,
        "timezone": tz_name,
        "rung": data.get("rung"),
    }
    values.update(extra or {})
    return values


def _plan_notice(uow: UnitOfWork, env: Env, rule: Rule, event: dict, ctx: _Context,
                 told: set[tuple[str, str]], now: datetime, *, nid: str | None = None,
                 values: dict | None = None, claim_into: list[Claimed] | None = None,
                 fresh: set[str] | None = None) -> str:
    """One notice of ``rule`` for ``event``, planned once: its deliveries,
    acknowledgement links and log. A notice planned already (the event came
    again, or a copy of it is being handled beside this one) is left as it is.
    With ``claim_into``, the new notice's deliveries due now are planned
    claimed by this worker and added to it, and its id to ``fresh``."""
    nid = nid or notice_id(str(event["event_id"]), rule.name)
    organization = None
    if "organization" in rule.to and ctx.org is not None:
        organization = Recipient(ctx.org.id, ctx.org.id, "organization", "webhook", None, ctx.org.language or "es")
    people, missing = model.audience(rule.to, event_data=event.get("data") or {}, case=ctx.case,
                                     people=ctx.people, supervisors=ctx.supervisors, organization=organization)
    # left out after the audience is found: a role held only by someone excluded is not
    # reported missing, which would tell
    people = [p for p in people if p.user_id not in ctx.excluded]
    planned: list[Planned] = []
    unreachable: list[Recipient] = []
    webhook_url = ctx.webhook_url()
    for person in people:
        chosen = [
            (channel, fallbacks)
            for channel, fallbacks in model.channels_for(person, rule.channels, urgency=rule.urgency,
                                                         kind=rule.kind, webhook_url=webhook_url)
            if (person.user_id, channel) not in told
        ]
        if not chosen and not any(u == person.user_id for u, _ in told):
            unreachable.append(person)
        hold = model.hold_until(person, urgency=rule.urgency, now=now, timezone_name=ctx.timezone)
        for channel, fallbacks in chosen:
            told.add((person.user_id, channel))
            planned.append(Planned(person, channel, fallbacks, hold))
    ack_due = None
    if rule.urgency != "normal" and rule.ack_wait_minutes:
        start = max([now] + [p.not_before for p in planned if p.not_before])
        ack_due = start + timedelta(minutes=rule.ack_wait_minutes)
    held = [p.not_before for p in planned if p.not_before]
    wake = min([t for t in [ack_due, *held] if t is not None], default=None)
    roles = [p.role for p in people]
    notice = Notice(
        id=nid, event_id=str(event["event_id"]), event_type=event["type"], rule=rule.name, kind=rule.kind,
        urgency=rule.urgency, organization_id=str(event["organization_id"]),
        case_id=str(event["case_id"]) if event.get("case_id") else None,
        step_ref=(event.get("data") or {}).get("step_ref"),
        frozen=json.dumps({"rule": rule_to_json(rule),
                           "values": values if values is not None else _values(event, ctx.case, ctx.timezone, env)}),
        rung=model.rung_of(roles, rule.ladder) if rule.urgency != "normal" else None,
        created_at=now, ack_due_at=ack_due, wake_at=wake,
    )
    if not uow.insert_notice_once(notice):
        return nid
    links = {}
    if rule.urgency != "normal":
        expires = now + timedelta(days=ctx.rules.ack_link_days)
        links = uow.create_acks(
            nid, sorted({p.recipient.user_id for p in planned if p.recipient.role != "organization"}), expires,
            new_notice=True)
    if claim_into is None:
        uow.plan_deliveries(notice, planned, now)
    else:
        claim_into.extend(uow.plan_claimed(notice, planned, now, organization=ctx.org, acks=links))
        if fresh is not None:
            fresh.add(nid)
    lines = [dict(step="held", rung=p.recipient.role, recipient_role=p.recipient.role, channel=p.channel,
                  code="quiet_hours") for p in planned if p.not_before]
    lines += [dict(step="no_channel", rung=p.role, recipient_role=p.role, code="no_usable_channel")
              for p in unreachable]
    lines += [dict(step="no_recipient", rung=role, recipient_role=role, code=f"no_{role}"[:32]) for role in missing]
    uow.log(notice, [dict(step="planned", rung=notice.rung, code=f"{len(planned)}")] + lines, now)
    for person in unreachable:
        env.observer.no_channel(rule.kind, "no_usable_channel")
    for role in missing:
        env.observer.no_channel(rule.kind, f"no_{role}")
    return nid


# -- sending ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Outcome:
    claimed: Claimed
    status: DeliveryStatus
    code: str | None = None
    sent_at: datetime | None = None


def _send(uow: UnitOfWork, env: Env, notice_ids: list[str], *, inbox: tuple[str, str] | None,
          occurred_at: datetime, planned: tuple[list[Claimed], set[str]] | None = None,
          excluded: frozenset[str] = frozenset()) -> bool:
    """Claim, send and record the deliveries of ``notice_ids`` due now; the
    first claim shares the planning transaction. Fallbacks planned on the
    way go out in a further round (at most one per channel of a chain).
    A delivery claimed for someone in ``excluded`` (planned before she was
    excluded from the case) is cancelled unsent, with no log line.

    ``planned``: the deliveries the caller just planned claimed, and the
    notices it made. Only notices made before (the event came again) are
    claimed from the database; and when every notice is new, nobody else can
    hold one of their deliveries, so what is left to try is known from this
    call's own outcomes, without asking the database."""
    rules = env.rules.current
    failed_left = False
    only: list[tuple[str, str]] | None = None  # after the first round: the fallbacks just planned
    claimed_first, fresh = planned if planned is not None else (None, set())
    all_fresh = bool(notice_ids) and fresh >= set(notice_ids)
    failed_here = False
    for _ in range(len(model.PERSONAL_CHANNELS) + 2):
        now = env.now()
        if claimed_first is not None:
            older = [n for n in notice_ids if n not in fresh]
            claimed = claimed_first + (uow.claim_due(older, now) if older else [])
            claimed_first = None
        else:
            claimed = uow.claim_due(notice_ids, now, only=only) if notice_ids else []
        if excluded:
            for c in [c for c in claimed if c.recipient_id in excluded]:
                uow.finish(c, DeliveryStatus.CANCELLED, code=None, sent_at=None)
            claimed = [c for c in claimed if c.recipient_id not in excluded]
        claimed = _reserve_paid(uow, env, rules, claimed, now)
        uow.commit()
        outcomes = [_deliver(env, rules, c) for c in claimed]
        now = env.now()
        again, final = _record(uow, env, outcomes, now)
        failed_here = failed_here or DeliveryStatus.FAILED in final
        if all_fresh:
            failed_left = failed_here
        else:
            failed_left = uow.failed_due(notice_ids, now) if notice_ids else False
        if not again and inbox is not None and not failed_left:
            uow.mark_handled_or_skip(*inbox)
        uow.commit()
        for outcome, status in zip(outcomes, final):
            kind = outcome.claimed.notice.kind
            env.observer.delivery(outcome.claimed.channel, kind, status.value)
            if outcome.status is DeliveryStatus.SENT:
                env.observer.latency(outcome.claimed.channel, kind, (now - occurred_at).total_seconds())
        if not again:
            break
        only = again
    if failed_left:
        raise model.DeliveryFailed("deliveries left to try again")
    return True


def _reserve_paid(uow: UnitOfWork, env: Env, rules: Rules, claimed: list[Claimed], now: datetime) -> list[Claimed]:
    """Count each claimed SMS or WhatsApp message against its organisation's
    monthly cap (inside the claim's transaction). One over the cap is
    recorded as capped and replaced at once by its next channel, or, for an
    urgent message with nothing left, by e-mail; the operators' metric rises."""
    kept = []
    for c in claimed:
        if c.channel not in model.PAID_CHANNELS:
            kept.append(c)
            continue
        org = c.organization
        cap = rules.caps(org.code if org else None).get(c.channel, 0)
        month = schedule.month_key(now, org.timezone if org and org.timezone else "UTC")
        count = uow.reserve_spending(c.notice.organization_id, month, c.channel, cap)
        if count is not None:
            env.observer.spend(c.notice.organization_id, c.channel, count, cap)
            kept.append(c)
            continue
        env.observer.capped(c.notice.organization_id, c.channel)
        env.observer.delivery(c.channel, c.notice.kind, DeliveryStatus.CAPPED.value)
        uow.finish(c, DeliveryStatus.CAPPED, code="monthly_cap", sent_at=None)
        uow.log(c.notice, [dict(step="capped", rung=c.recipient_role, recipient_role=c.recipient_role,
                                channel=c.channel, code="monthly_cap")], now)
        nxt = _fallback(uow, c, now, urgent_email=c.notice.urgency != "normal")
        if nxt is not None:
            kept.extend(uow.claim_due([c.notice.id], now, only=[(c.recipient_id, nxt)]))
    return kept


def _deliver(env: Env, rules: Rules, c: Claimed) -> _Outcome:
    """Render and send one claimed delivery; never raises. Outside any transaction."""
    recipient = c.recipient
    webhook_url = rules.webhook_url(c.organization.code) if c.organization and c.organization.code else None
    address = recipient.address_on(c.channel, webhook_url) if recipient else None
    sender = env.senders.get(c.channel)
    if recipient is None or address is None or sender is None:
        return _Outcome(c, DeliveryStatus.CANCELLED, "no_address" if recipient else "no_recipient")
    frozen = json.loads(c.notice.frozen)
    values = dict(frozen["values"])
    values["ack_link"] = env.ack_link(acks.issue(env.ack_keys, bytes.fromhex(c.ack_id), c.ack_expires_at)) \
        if c.ack_id else None
    fallback_locale = (c.organization.language if c.organization else None) or "es"
    try:
        outgoing = env.renderer.render(c.notice.kind, c.channel, recipient.locale, fallback_locale=fallback_locale,
                                       values=values)
        receipt = sender.send(address, outgoing, key=f"{c.notice.id}:{c.recipient_id}:{c.channel}")
    except PermanentRejection as exc:
        return _Outcome(c, DeliveryStatus.REJECTED, exc.code)
    except TransientFailure as exc:
        return _Outcome(c, DeliveryStatus.FAILED, exc.code)
    except Exception as exc:  # a sender or template bug: logged by class, tried again later
        log.warning("delivery failed", extra={"channel": c.channel, "error": type(exc).__name__})
        return _Outcome(c, DeliveryStatus.FAILED, type(exc).__name__[:32])
    return _Outcome(c, DeliveryStatus.SENT, receipt.code, datetime.now(timezone.utc))


def _record(uow: UnitOfWork, env: Env, outcomes: list[_Outcome], now: datetime
            ) -> tuple[list[tuple[str, str]], list[DeliveryStatus]]:
    """Every outcome and its log line; a refused delivery (any failed one,
    if urgent) hands over to the next channel of its chain. Returns the
    (recipient, channel) of the fallbacks planned, to be sent in a further
    round, and each outcome's status as recorded (a failure handed over is
    superseded)."""
    again, final = [], []
    for o in outcomes:
        c, status = o.claimed, o.status
        urgent = c.notice.urgency != "normal"
        nxt = None
        if status is DeliveryStatus.REJECTED or (status is DeliveryStatus.FAILED and urgent and c.fallbacks):
            nxt = _fallback(uow, c, now, urgent_email=False)
            if status is DeliveryStatus.FAILED and nxt is not None:
                status = DeliveryStatus.SUPERSEDED
        if status is not DeliveryStatus.SENT and c.channel in model.PAID_CHANNELS:
            org = c.organization
            uow.release_spending(c.notice.organization_id,
                                 schedule.month_key(now, org.timezone if org and org.timezone else "UTC"), c.channel)
        uow.finish(c, status, code=o.code, sent_at=o.sent_at)
        uow.log(c.notice, [dict(step=status.value, rung=c.recipient_role, recipient_role=c.recipient_role,
                                channel=c.channel, code=o.code)], now)
        if nxt is not None:
            again.append((c.recipient_id, nxt))
        final.append(status)
    return again, final


def _fallback(uow: UnitOfWork, c: Claimed, now: datetime, *, urgent_email: bool) -> str | None:
    """Plan the next channel of a delivery's chain for the same person (or
    e-mail for an urgent message past its cap with nothing left), unless she
    has it planned already; its channel, or None."""
    recipient = c.recipient
    if recipient is None:
        return None
    options = list(c.fallbacks) + (["email"] if urgent_email else [])
    for position, channel in enumerate(options):
        if not recipient.address_on(channel):
            continue
        rest = tuple(options[position + 1:]) if position < len(c.fallbacks) else ()
        if uow.plan_fallback(c, channel, rest, now):
            uow.log(c.notice, [dict(step="fallback", rung=c.recipient_role, recipient_role=c.recipient_role,
                                    channel=channel, code=c.channel)], now)
            return channel
    return None


# -- the timer: climbs and releases --------------------------------------------------

def wake(uow: UnitOfWork, env: Env, *, limit: int = 200) -> int:
    """Look at every notice whose time came: climb one rung where nobody
    acknowledged in time, release what quiet hours held, and stage a
    ``notice_due`` for it. Safe with many replicas: each notice is taken by
    compare-and-set on its wake time. Who is excluded from the case is
    asked before a notice that climbs is taken; if cases cannot answer, the
    rest waits for the next tick. Returns how many notices were taken."""
    now = env.now()
    taken = 0
    for nid, wake_at in uow.notices_to_wake(now, limit):
        try:
            excluded = _excluded_from_climb(uow, env, uow.notice(nid), now)
        except model.DeliveryFailed:
            return taken
        notice = uow.take_notice(nid, wake_at)
        if notice is None:
            uow.rollback()
            continue  # another replica took it
        if _climbs(notice, now):
            if excluded is None:
                uow.rollback()
                continue  # it came due to climb since it was read: the next tick asks first
            _climb(uow, env, notice, now, excluded)
            notice = uow.notice(nid)
        held = uow.next_hold(nid, now)
        uow.set_wake(nid, min([t for t in (notice.ack_due_at, held) if t is not None], default=None))
        if uow.has_due(nid, now):
            _stage_notice_due(uow, env, notice, now)
        uow.commit()
        taken += 1
    return taken


def _climbs(notice: Notice, now: datetime) -> bool:
    return notice.ack_due_at is not None and notice.ack_due_at <= now and notice.acknowledged_at is None


def _excluded_from_climb(uow: UnitOfWork, env: Env, notice: Notice, now: datetime) -> frozenset[str] | None:
    """Who is excluded from the case of ``notice`` if it is due to climb
    (nobody, for a notice of no case); None if it is not due to climb."""
    if not _climbs(notice, now):
        return None
    if notice.case_id is None:
        return frozenset()
    candidates = uow.people_of(notice.organization_id) + uow.supervisors_of(notice.organization_id)
    return _excluded(uow, env, notice.organization_id, notice.case_id, candidates)


def _climb(uow: UnitOfWork, env: Env, notice: Notice, now: datetime, excluded: frozenset[str]) -> None:
    """Nobody acknowledged ``notice`` within its rule's wait: tell the next
    rung of its ladder (once: the rung is recorded), and those already told
    on the next channel of their chains. Logged step by step. Nobody in
    ``excluded`` is told again, nor on a rung: a rung held only by people
    excluded is passed over, as if the ladder did not have it."""
    frozen = json.loads(notice.frozen)
    rule = rule_from_json(frozen["rule"])
    for c in uow.unacknowledged_sent(notice.id):
        if c.recipient_id not in excluded:
            _fallback(uow, c, now, urgent_email=False)
    org = uow.organization(notice.organization_id)
    ctx = _Context(org=org, case=uow.case(notice.case_id) if notice.case_id else None,
                   people=uow.people_of(notice.organization_id),
                   supervisors=uow.supervisors_of(notice.organization_id), rules=env.rules.current)
    rung, people, missing = model.next_rung(notice.rung, rule.ladder), [], []
    while rung is not None:
        holders, missing = model.audience((rung,), event_data={}, case=ctx.case, people=ctx.people,
                                          supervisors=ctx.supervisors)
        people = [p for p in holders if p.user_id not in excluded]
        if people or not holders:
            break
        rung = model.next_rung(rung, rule.ladder)
    if rung is None:
        uow.update_notice(notice.id, ack_due_at=None)
        uow.log(notice, [dict(step="exhausted", rung=notice.rung, code="top_of_ladder")], now)
        return
    told = uow.told(notice.id)
    planned = []
    for person in people:
        hold = model.hold_until(person, urgency=notice.urgency, now=now, timezone_name=ctx.timezone)
        for channel, fallbacks in model.channels_for(person, rule.channels, urgency=notice.urgency, kind=rule.kind):
            if (person.user_id, channel) not in told:
                planned.append(Planned(person, channel, fallbacks, hold))
    uow.plan_deliveries(notice, planned, now)
    uow.create_acks(notice.id, sorted({p.recipient.user_id for p in planned}),
                    now + timedelta(days=ctx.rules.ack_link_days))
    above = model.next_rung(rung, rule.ladder)
    uow.update_notice(notice.id, rung=rung,
                      ack_due_at=now + timedelta(minutes=rule.ack_wait_minutes) if above and rule.ack_wait_minutes
                      else None)
    uow.log(notice, [dict(step="climbed", rung=rung, code=f"{len(planned)}")] +
            [dict(step="no_recipient", rung=role, recipient_role=role, code=f"no_{role}"[:32]) for role in missing],
            now)
    env.observer.escalated(rung)


def _stage_notice_due(uow: UnitOfWork, env: Env, notice: Notice, now: datetime) -> None:
    uow.stage(build_event("notice_due", organization_id=notice.organization_id, case_id=notice.case_id,
                          occurred_at=now, data={"notice_id": notice.id}))


# -- acknowledgement ------------------------------------------------------------------

@dataclass(frozen=True)
class AckAnswer:
    state: str  # open, acknowledged, used, expired, invalid
    case_code: str | None = None


def ack_status(uow: UnitOfWork, env: Env, token: str) -> AckAnswer:
    """What the acknowledgement page shows before the tap: the case code,
    and whether the link can still be used. Writes nothing."""
    found = _ack_of(uow, env, token)
    uow.rollback()
    if isinstance(found, AckAnswer):
        return found
    ack, code = found
    return AckAnswer("used" if ack.used_at else "open", code)


def acknowledge(uow: UnitOfWork, env: Env, token: str, *, via: str = "link") -> AckAnswer:
    """Record the tap: the link is used once; its notice, and every open
    notice of the same step of the same case, stop climbing."""
    found = _ack_of(uow, env, token)
    if isinstance(found, AckAnswer):
        uow.rollback()
        return found
    ack, code = found
    return _use_ack(uow, env, ack, code, via)


def acknowledge_by_reply(uow: UnitOfWork, env: Env, phone: str, body: str) -> int:
    """An SMS reply "OK" (or "SI", "CONFIRMO"), optionally followed by the
    case code, acknowledges the newest open urgent notice sent to that phone
    (of that case). Returns how many were acknowledged (0 or 1)."""
    words = body.strip().upper().split()
    if not words or words[0] not in ("OK", "SI", "SÍ", "CONFIRMO", "ACK"):
        uow.rollback()
        return 0
    case_code = words[1] if len(words) > 1 else None
    found = uow.open_ack_for_phone(phone, case_code, env.now())
    if found is None:
        uow.rollback()
        return 0
    ack, code = found
    return 1 if _use_ack(uow, env, ack, code, "sms_reply").state == "acknowledged" else 0


def _ack_of(uow: UnitOfWork, env: Env, token: str):
    try:
        ack_id = acks.verify(env.ack_keys, token, env.now())
    except acks.AckRefused as refused:
        env.observer.ack_refused(refused.reason)
        return AckAnswer("expired" if refused.reason == "expired" else "invalid")
    found = uow.ack(ack_id.hex())
    if found is None:
        return AckAnswer("invalid")
    return found


def _use_ack(uow: UnitOfWork, env: Env, ack, code: str | None, via: str) -> AckAnswer:
    now = env.now()
    if not uow.use_ack(ack.id, now):
        uow.rollback()
        return AckAnswer("used", code)
    notice = uow.notice(ack.notice_id)
    stopped = uow.acknowledge_notices(notice, ack.recipient_id, now)
    for n in stopped:
        uow.log(n, [dict(step="acknowledged", rung=n.rung, code=via)], now)
    uow.commit()
    env.observer.acknowledged(notice.rung or "none")
    return AckAnswer("acknowledged", code)


# -- digest ------------------------------------------------------------------------------

def plan_digests(uow: UnitOfWork, env: Env, figures: Callable[[Recipient], dict | None]) -> int:
    """Each president's weekly digest at her local day and hour (her own, or
    the rules'), once per ISO week however many replicas run this: the
    (person, week) key is unique. ``figures(person)`` gives the counts of
    her organisation's cases (None if they cannot be had now: tried again at
    the next tick). Returns how many digests were planned."""
    now, rules, planned = env.now(), env.rules.current, 0
    for person, org in uow.presidents():
        if org is None:
            continue  # her organisation (its time zone) not heard of yet: her hour is not known
        code = org.code
        rule = rules.digest_rule(code)
        if rule is None:
            continue
        weekday, hour = rules.digest_schedule(code)
        if person.digest_weekday is not None and person.digest_hour is not None:
            weekday, hour = person.digest_weekday, person.digest_hour
        tz_name = org.timezone
        week = schedule.digest_due(now, tz_name, weekday, hour)
        if week is None or uow.digest_sent(person.user_id, week):
            uow.rollback()
            continue
        counts = figures(person)
        if counts is None:
            continue
        counts = dict(counts, unacknowledged=uow.unacknowledged(person.organization_id, now))
        nid = notice_id(f"digest:{person.user_id}:{week}", rule.name)
        if not uow.insert_digest_once(person.user_id, week, nid):
            uow.rollback()
            continue
        event = {"event_id": nid, "type": "digest", "organization_id": person.organization_id, "case_id": None,
                 "data": {}}
        ctx = _Context(org=org, case=None, people=[person], supervisors=[], rules=rules)
        values = {"case_code": None, "link": f"{env.public_url.rstrip('/')}/console/", "due_at": None,
                  "timezone": tz_name, "rung": None, **counts}
        _plan_notice(uow, env, rule, event, ctx, set(), now, nid=nid, values=values)
        notice = uow.notice(nid)
        if uow.has_due(nid, now):
            _stage_notice_due(uow, env, notice, now)
        uow.commit()
        planned += 1
    return planned


# -- the case's history -------------------------------------------------------------------

def case_notifications(uow: UnitOfWork, *, organization_ids: set[str], case_id: str) -> dict:
    """Deliveries about a case and every attempt and escalation step, if the
    case belongs to one of ``organization_ids``; of any other, nothing (as
    if there were none). Never a body, an address or a person's name."""
    rows = [d for d in uow.deliveries_for_case(case_id) if d["organization_id"] in organization_ids]
    history = [h for h in uow.log_for_case(case_id) if h["organization_id"] in organization_ids]
    return {
        "status": model.overall_status([d["status"] for d in rows]),
        "deliveries": [
            {"channel": d["channel"], "recipient_role": d["recipient_role"], "status": d["status"],
             "attempts": d["attempts"], "sent_at": d["sent_at"], "kind": d["kind"],
             "provider_code": d["provider_code"]}
            for d in rows
        ],
        "history": [
            {"at": h["at"], "kind": h["kind"], "step": h["step"], "rung": h["rung"],
             "recipient_role": h["recipient_role"], "channel": h["channel"], "code": h["code"]}
            for h in history
        ],
    }
