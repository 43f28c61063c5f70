"""GBVIMS incident classification and the facts derived from a case's dates
(domain.md, "Incident classification")."""
from __future__ import annotations

from datetime import datetime
from enum import Enum


class IncidentType(str, Enum):
    RAPE = "rape"
    SEXUAL_ASSAULT = "sexual_assault"
    PHYSICAL_ASSAULT = "physical_assault"
    FORCED_MARRIAGE = "forced_marriage"
    DENIAL_OF_RESOURCES = "denial_of_resources"
    PSYCHOLOGICAL_ABUSE = "psychological_abuse"
    NON_GBV = "non_gbv"


# The questions, asked in this order; the first yes gives the type.
QUESTIONS: tuple[tuple[str, IncidentType], ...] = (
    ("rape", IncidentType.RAPE),
    ("sexual_assault", IncidentType.SEXUAL_ASSAULT),
    ("physical_assault", IncidentType.PHYSICAL_ASSAULT),
    ("forced_marriage", IncidentType.FORCED_MARRIAGE),
    ("denial_of_resources", IncidentType.DENIAL_OF_RESOURCES),
    ("psychological_abuse", IncidentType.PSYCHOLOGICAL_ABUSE),
)
SEXUAL = frozenset({IncidentType.RAPE, IncidentType.SEXUAL_ASSAULT})

PERPETRATOR_RELATIONSHIPS = ("co_worker", "supervisor", "partner", "family", "buyer_trader", "unknown", "other")
PLACES = ("mine_site", "camp", "processing_plant", "home", "public_space", "other", "unknown")
CONTEXT_FLAGS = ("intimate_partner_violence", "workplace_harassment", "possible_sexual_exploitation")


class ClassificationError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def classify(answers: dict[str, bool]) -> IncidentType:
    """The GBVIMS type from yes/no answers. Every question up to the first yes
    must be answered, so that a skipped question cannot hide a graver type."""
    for question, incident_type in QUESTIONS:
        if question not in answers:
            raise ClassificationError(question, "answer every question up to the first yes")
        if answers[question] is True:
            return incident_type
        if answers[question] is not False:
            raise ClassificationError(question, "answer yes (true) or no (false)")
    return IncidentType.NON_GBV


def child_sexual_abuse(incident_type: IncidentType | None, minor: bool) -> bool:
    return minor and incident_type in SEXUAL


def delay_bucket(incident_at: datetime | None, reported_at: datetime) -> str | None:
    """Reporting delay in half-open day intervals: [0,3], (3,5], (5,14], (14,30], over 30."""
    if incident_at is None:
        return None
    days = (reported_at - incident_at).total_seconds() / 86400
    if days <= 3:
        return "0-3"
    if days <= 5:
        return "4-5"
    if days <= 14:
        return "6-14"
    if days <= 30:
        return "15-30"
    return "over-30"
