"""Who is told what, on which channel, and whether it reached them.

Pure: the service layer hands in the people, the case facts and the frozen
rule; these functions decide who hears a notice, on which channels, when
(quiet hours), and who is next on the ladder."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum

from services.notifications.domain import schedule

URGENCIES = ("normal", "urgent", "critical")
# the escalation ladder of domain.md, lowest first: responsible person, then
# president, then supervisor (a focal point's step climbs through the case lead)
LADDER = ("focal_point", "case_lead", "president", "supervisor")
PERSONAL_CHANNELS = ("email", "sms", "whatsapp")
PAID_CHANNELS = ("sms", "whatsapp")  # counted against the organisation's monthly cap


class DeliveryStatus(str, Enum):
    PENDING = "pending"  # planned; due now, or held by quiet hours until ``not_before``
    SENDING = "sending"  # claimed by one worker until its claim expires
    SENT = "sent"  # the provider accepted it
    FAILED = "failed"  # this try failed (5xx, timeout): the event is tried again, or dead-lettered
    REJECTED = "rejected"  # the provider refused it for good (4xx): never tried again
    SUPERSEDED = "superseded"  # an urgent message that failed here went out on the next channel
    CAPPED = "capped"  # the organisation's monthly SMS/WhatsApp cap was reached
    CANCELLED = "cancelled"  # the recipient left, or has no address on this channel any more


FINISHED = (DeliveryStatus.SENT, DeliveryStatus.REJECTED, DeliveryStatus.SUPERSEDED, DeliveryStatus.CAPPED,
            DeliveryStatus.CANCELLED)


@dataclass(frozen=True)
class Recipient:
    user_id: str
    organization_id: str
    role: str  # the role she is addressed in by a rule ("" until a rule picks her)
    channel: str  # "email", kept for the projection's shape
    address: str | None  # work e-mail
    locale: str
    roles: frozenset[str] = field(default_factory=frozenset)  # every role she holds
    phone: str | None = None  # E.164
    whatsapp_opt_in: bool = False
    quiet_start: str | None = None  # HH:MM, her organisation's zone
    quiet_end: str | None = None
    digest_weekday: int | None = None
    digest_hour: int | None = None
    preferences: dict = field(default_factory=dict, hash=False, compare=False)  # kind -> [channels]

    def address_on(self, channel: str, webhook_url: str | None = None) -> str | None:
        """Where a message on ``channel`` goes, or None if she cannot get one there."""
        if channel == "email":
            return self.address
        if channel == "sms":
            return self.phone
        if channel == "whatsapp":
            return self.phone if self.whatsapp_opt_in else None
        if channel == "webhook":
            return webhook_url if self.role == "organization" else None
        return None


@dataclass(frozen=True)
class CaseFacts:
    """What notifications knows of a case (from the case's own events)."""

    case_id: str
    survivor_code: str | None
    focal_point_id: str | None
    case_lead_id: str | None
    risk_level: str | None = None
    closed: bool = False


@dataclass(frozen=True)
class Planned:
    """One delivery decided for a notice: to whom, in which role, on which
    channel, with which channels left to fall back on, and from when."""

    recipient: Recipient
    channel: str
    fallbacks: tuple[str, ...]
    not_before: datetime | None  # quiet hours: held until then


def audience(
    to: tuple[str, ...], *, event_data: dict, case: CaseFacts | None, people: list[Recipient],
    supervisors: list[Recipient], organization: Recipient | None = None,
) -> tuple[list[Recipient], list[str]]:
    """The people a rule's ``to`` names, each with the role she is addressed
    in, once each (the first role that names her wins), and the reasons for
    audiences nobody answers to ("no case lead", say), for the log."""
    chosen: dict[str, Recipient] = {}
    missing: list[str] = []
    by_id = {p.user_id: p for p in people}

    def add(person: Recipient | None, role: str) -> None:
        if person is not None and person.user_id not in chosen:
            chosen[person.user_id] = replace(person, role=role)

    for who in to:
        role = who
        if who == "responsible":
            role = event_data.get("responsible", "")
        elif who == "rung":
            role = event_data.get("rung", "")
        found = _holders(role, case, by_id, people, supervisors, organization)
        if not found:
            missing.append(role or who)
        for person in found:
            add(person, role)
    return list(chosen.values()), missing


def _holders(role, case, by_id, people, supervisors, organization) -> list[Recipient]:
    if role == "president":
        return [p for p in people if "president" in p.roles]
    if role == "supervisor":
        return list(supervisors)
    if role == "case_lead":
        person = by_id.get(case.case_lead_id) if case and case.case_lead_id else None
        return [person] if person else []
    if role == "focal_point":
        person = by_id.get(case.focal_point_id) if case and case.focal_point_id else None
        return [person] if person else []
    if role == "organization":
        return [organization] if organization else []
    return []


def channels_for(
    person: Recipient, chains: tuple[tuple[str, ...], ...], *, urgency: str, kind: str,
    webhook_url: str | None = None,
) -> list[tuple[str, tuple[str, ...]]]:
    """For each chain of the rule, the first channel she can get a message
    on and the ones left after it; her preferences narrow the channels of a
    kind unless the message is critical. Chains with no channel for her are
    left out: an empty list means she cannot be reached by this rule."""
    allowed = None if urgency == "critical" else person.preferences.get(kind)
    picked: list[tuple[str, tuple[str, ...]]] = []
    taken: set[str] = set()
    for chain in chains:
        usable = [
            c for c in chain
            if c not in taken and person.address_on(c, webhook_url)
            and (allowed is None or c in allowed or c == "webhook")
        ]
        if usable:
            picked.append((usable[0], tuple(usable[1:])))
            taken.update(usable)
    return picked


def hold_until(person: Recipient, *, urgency: str, now: datetime, timezone_name: str) -> datetime | None:
    """Quiet hours hold everything but critical messages until they end."""
    if urgency == "critical" or person.role == "organization":
        return None
    return schedule.quiet_until(now, timezone_name, person.quiet_start, person.quiet_end)


def rung_of(roles: list[str], ladder: tuple[str, ...]) -> str | None:
    """The highest rung of ``ladder`` among the roles a notice reached."""
    reached = [r for r in ladder if r in roles]
    return reached[-1] if reached else None


def next_rung(current: str | None, ladder: tuple[str, ...]) -> str | None:
    """The rung above ``current`` (the bottom one when nothing was reached), or None at the top."""
    if current is None:
        return ladder[0] if ladder else None
    if current not in ladder:
        # a notice that reached a role off the ladder climbs from the rank that role has on the full one
        rank = LADDER.index(current) if current in LADDER else -1
        above = [r for r in ladder if LADDER.index(r) > rank]
        return above[0] if above else None
    index = ladder.index(current)
    return ladder[index + 1] if index + 1 < len(ladder) else None


def overall_status(statuses: list[str]) -> str:
    """One word for a case's notifications, as the API shows it."""
    if not statuses:
        return "none"
    finished = {s.value for s in FINISHED}
    if all(s in finished for s in statuses):
        return "delivered" if any(s == DeliveryStatus.SENT.value for s in statuses) else "undeliverable"
    if any(s == DeliveryStatus.FAILED.value for s in statuses):
        return "retrying"
    return "pending"


class DeliveryFailed(Exception):
    """At least one delivery of an event failed and will be tried again."""


class CaseNotKnownYet(DeliveryFailed):
    """An event of a case came before the case's opening: tried again later."""
