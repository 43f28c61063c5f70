"""Who is told what, on which channel, and whether it reached them."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum


class DeliveryStatus(str, Enum):
    PENDING = "pending"
    SENDING = "sending"  # claimed by one worker until its claim expires
    SENT = "sent"
    FAILED = "failed"  # this try failed; the event will be tried again or dead-lettered
    CANCELLED = "cancelled"  # the recipient left before it could be sent


FINISHED = (DeliveryStatus.SENT, DeliveryStatus.CANCELLED)


@dataclass(frozen=True)
class Recipient:
    user_id: str
    organization_id: str
    role: str  # the role she is addressed in by a rule ("" until a rule picks her)
    channel: str
    address: str | None
    locale: str
    roles: frozenset[str] = field(default_factory=frozenset)  # every role she holds


@dataclass(frozen=True)
class Claimed:
    """A delivery this worker holds the claim on, so that it alone sends it.
    ``recipient`` is None when the recipient is gone: the delivery is then
    cancelled."""

    recipient_id: str
    channel: str
    recipient: Recipient | None


@dataclass(frozen=True)
class Attempt:
    """How sending one claimed delivery ended."""

    recipient_id: str
    channel: str
    status: DeliveryStatus  # SENT, FAILED or CANCELLED
    error: str | None = None  # the exception's class name: never its text


@dataclass(frozen=True)
class Message:
    """What goes out. Built from ids and codes only: never survivor details."""

    subject: str
    body: str


def recipients_for_case_opened(recipients: list[Recipient]) -> list[Recipient]:
    """The committee's presidents hear of every new case at once, whatever
    other roles they hold too."""
    return [replace(r, role="president") for r in recipients if "president" in r.roles and r.address]


def overall_status(statuses: list[str]) -> str:
    """One word for a case's notifications, as the API shows it."""
    if not statuses:
        return "none"
    if all(s in (DeliveryStatus.SENT.value, DeliveryStatus.CANCELLED.value) for s in statuses):
        return "delivered"
    if any(s == DeliveryStatus.FAILED.value for s in statuses):
        return "retrying"
    return "pending"


class DeliveryFailed(Exception):
    """At least one delivery of an event failed; the event is tried again."""
