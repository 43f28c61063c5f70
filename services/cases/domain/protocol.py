"""The remediation protocol as data, and the plan it gives a case.

A protocol is a versioned list of step rules (domain.md, "Default remediation
protocol"). ``plan`` turns it and the facts of a case into due times; it is a
pure function of those facts, so recomputing after a change of risk or
classification is just calling it again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from zoneinfo import ZoneInfo

from services.cases.domain.classification import IncidentType

PEP_WINDOW = timedelta(hours=72)  # HIV post-exposure prophylaxis
EC_WINDOW = timedelta(hours=120)  # emergency contraception


class Risk(str, Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class DueKind(str, Enum):
    AFTER_OPENING = "after_opening"
    AFTER_STEP = "after_step"
    CLINICAL = "clinical"
    QUARTER_END = "quarter_end"


@dataclass(frozen=True)
class Due:
    kind: DueKind
    hours: float | None = None
    by_risk: dict[str, float] | None = None  # risk level → hours, instead of ``hours``
    step: str | None = None  # the step it counts from (after_step, clinical)
    late_hours: float | None = None  # clinical: from the step when both windows have closed

    def span(self, risk: Risk | None) -> timedelta:
        if self.by_risk is not None:
            # before the risk assessment the shortest deadline holds: safety first
            return timedelta(hours=self.by_risk[(risk or Risk.HIGH).value])
        return timedelta(hours=self.hours or 0)


@dataclass(frozen=True)
class StepRule:
    id: str
    title: dict[str, str]
    responsible: tuple[str, ...]
    due: Due
    done_when: str
    types: frozenset[IncidentType] | None = None  # only for these incident types
    minor_only: bool = False
    approver: str | None = None
    approver_if_high_risk: str | None = None
    consent: str | None = None  # the consent purpose whose withdrawal cancels it

    def applies(self, facts: "CaseFacts") -> bool:
        if self.minor_only and not facts.minor:
            return False
        if self.types is not None and facts.incident_type not in self.types:
            return False
        return True


@dataclass(frozen=True)
class Protocol:
    id: str
    version: int
    steps: tuple[StepRule, ...]

    def step(self, step_id: str) -> StepRule:
        for rule in self.steps:
            if rule.id == step_id:
                return rule
        raise KeyError(step_id)


@dataclass(frozen=True)
class CaseFacts:
    opened_at: datetime
    incident_at: datetime | None = None
    incident_type: IncidentType | None = None
    minor: bool = False
    risk: Risk | None = None
    timezone: str = "UTC"
    completed: dict[str, datetime] = field(default_factory=dict)
    withdrawn_consents: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PlannedStep:
    step_id: str
    due_at: datetime
    urgent: bool = True


def plan(protocol: Protocol, facts: CaseFacts) -> list[PlannedStep]:
    """Every applicable step with its due time, in protocol order."""
    if "case_management" in facts.withdrawn_consents:
        return []  # the survivor stopped the case work: no step is owed any more
    planned: dict[str, PlannedStep] = {}
    for rule in protocol.steps:
        if not rule.applies(facts) or (rule.consent and rule.consent in facts.withdrawn_consents):
            continue
        planned[rule.id] = _due(rule, facts, planned)
    return list(planned.values())


def _anchor(step_id: str, facts: CaseFacts, planned: dict[str, PlannedStep]) -> datetime:
    """When a step was done, or, while it is not, when it is due."""
    if step_id in facts.completed:
        return facts.completed[step_id]
    if step_id in planned:
        return planned[step_id].due_at
    return facts.opened_at


def _due(rule: StepRule, facts: CaseFacts, planned: dict[str, PlannedStep]) -> PlannedStep:
    due = rule.due
    if due.kind is DueKind.AFTER_OPENING:
        return PlannedStep(rule.id, facts.opened_at + due.span(facts.risk))
    if due.kind is DueKind.AFTER_STEP:
        return PlannedStep(rule.id, _anchor(due.step, facts, planned) + due.span(facts.risk))
    if due.kind is DueKind.CLINICAL:
        return _clinical(rule, facts)
    if due.kind is DueKind.QUARTER_END:
        return PlannedStep(rule.id, quarter_end(facts.opened_at, facts.timezone), urgent=False)
    raise ValueError(f"unknown due kind {due.kind}")


def _clinical(rule: StepRule, facts: CaseFacts) -> PlannedStep:
    """Medical referral after rape or sexual assault: counted from registration
    (life-saving care does not wait for paperwork: until the registration step
    is done, from the opening), and never after the clinical window that is
    still open, counted from the incident."""
    due = rule.due
    anchor = facts.completed.get(due.step, facts.opened_at)
    soon = anchor + due.span(facts.risk)
    if facts.incident_at is None:
        return PlannedStep(rule.id, soon)
    elapsed = facts.opened_at - facts.incident_at
    for window in (PEP_WINDOW, EC_WINDOW):
        if elapsed <= window:
            return PlannedStep(rule.id, max(facts.opened_at, min(soon, facts.incident_at + window)))
    return PlannedStep(rule.id, anchor + timedelta(hours=due.late_hours or 24), urgent=False)


def quarter_end(moment: datetime, timezone: str) -> datetime:
    """The last instant of the calendar quarter of ``moment`` in ``timezone``."""
    if moment.tzinfo is None:
        # astimezone would take the machine's own zone for it: a quarter end off by hours
        raise ValueError("a datetime without a time zone names no instant")
    local = moment.astimezone(ZoneInfo(timezone))
    first_month_next = ((local.month - 1) // 3 + 1) * 3 + 1
    year = local.year + (1 if first_month_next > 12 else 0)
    month = first_month_next - 12 if first_month_next > 12 else first_month_next
    start_next = local.replace(year=year, month=month, day=1, hour=0, minute=0, second=0, microsecond=0)
    return start_next - timedelta(microseconds=1)


@dataclass(frozen=True)
class PlanChange:
    """What a recompute does to a stored plan."""

    keep: tuple[PlannedStep, ...]  # open steps with their (possibly new) due time
    cancel: tuple[str, ...]  # open steps that no longer apply


def recompute(protocol: Protocol, facts: CaseFacts, open_steps: dict[str, datetime]) -> PlanChange:
    """New due times for the open steps of a plan after its facts changed.

    Done steps are history and are not touched; steps that now apply are
    added; open steps that no longer apply (classification changed, consent
    withdrawn) are cancelled. Applying it to its own result changes nothing.
    """
    fresh = [s for s in plan(protocol, facts) if s.step_id not in facts.completed]
    wanted = {s.step_id for s in fresh}
    return PlanChange(
        keep=tuple(fresh),
        cancel=tuple(sorted(step_id for step_id in open_steps if step_id not in wanted)),
    )
