"""Informed consent, recorded per purpose (domain.md, principles)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from services.cases.domain.model import Case, InvalidCase

PURPOSES = ("case_management", "referral", "aggregate_reporting")
DATA_CATEGORIES = ("contact", "incident_summary", "medical", "protection_needs", "identity")
GIVERS = ("survivor", "caregiver")


@dataclass
class Consent:
    id: str
    case_id: str
    purpose: str
    given_by: str
    recorded_by: str
    recorded_at: datetime
    provider_id: str | None = None
    data_shared: tuple[str, ...] = ()
    child_assent: bool | None = None
    withdrawn_by: str | None = None
    withdrawn_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.withdrawn_at is None

    def withdraw(self, actor_id: str, now: datetime) -> None:
        if not self.active:
            raise InvalidCase("consent_id", "this consent was already withdrawn")
        self.withdrawn_by = actor_id
        self.withdrawn_at = now


def record(
    case: Case, *, purpose: str, given_by: str, actor_id: str, now: datetime,
    provider_id: str | None = None, data_shared: list[str] | None = None, child_assent: bool | None = None,
) -> Consent:
    """A minor's consent is the caregiver's, with the child's own assent; a
    referral names its provider and what data goes to it, and nothing more."""
    if purpose not in PURPOSES:
        raise InvalidCase("purpose", f"one of {', '.join(PURPOSES)}")
    if given_by not in GIVERS:
        raise InvalidCase("given_by", "survivor or caregiver")
    if case.minor:
        if given_by != "caregiver":
            raise InvalidCase("given_by", "a minor's consent is given by a caregiver, with the child's assent")
        if child_assent is not True:
            raise InvalidCase("child_assent", "record the child's own assent")
    elif given_by != "survivor":
        raise InvalidCase("given_by", "an adult survivor gives her own consent")
    shared = tuple(sorted(set(data_shared or ())))
    if set(shared) - set(DATA_CATEGORIES):
        raise InvalidCase("data_shared", f"each one of {', '.join(DATA_CATEGORIES)}")
    if purpose == "referral":
        if not provider_id:
            raise InvalidCase("provider_id", "a referral consent names its provider")
        if not shared:
            raise InvalidCase("data_shared", "say which data the provider may receive")
    elif provider_id or shared:
        raise InvalidCase("provider_id", "only a referral consent names a provider and data")
    return Consent(
        id=str(uuid.uuid4()), case_id=case.id, purpose=purpose, given_by=given_by, recorded_by=actor_id,
        recorded_at=now, provider_id=provider_id, data_shared=shared,
        child_assent=child_assent if case.minor else None,
    )


def withdrawn_purposes(consents: list[Consent]) -> frozenset[str]:
    """Purposes consent was withdrawn for and not given again: work for them stops."""
    withdrawn = {c.purpose for c in consents if not c.active}
    still_given = {c.purpose for c in consents if c.active}
    return frozenset(withdrawn - still_given)
