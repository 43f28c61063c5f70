"""When a plan step's alerts fall due: due soon, overdue, then escalation up
the ladder responsible → president → supervisor (domain.md)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class AlertPolicy:
    due_soon: timedelta = timedelta(hours=2)
    to_president: timedelta = timedelta(hours=24)  # after the due time
    to_supervisor: timedelta = timedelta(hours=72)


# stage n means the first n alerts of this list were sent
ALERTS: tuple[tuple[str, str], ...] = (
    ("step_due_soon", "responsible"),
    ("step_overdue", "responsible"),
    ("step_escalated", "president"),
    ("step_escalated", "supervisor"),
)


def alert_role(responsible: str | tuple[str, ...]) -> str:
    """The one role a step's alerts and events name: the first of its
    responsible roles ("case_lead,president" is stored for M1). Naming both
    would single out the mandatory report, and so a minor; the president
    hears of it on the escalation ladder, and reads it in the case."""
    roles = responsible.split(",") if isinstance(responsible, str) else responsible
    return roles[0]


def alert_time(stage: int, due_at: datetime, policy: AlertPolicy) -> datetime | None:
    """When the alert after ``stage`` falls due, or None when all were sent."""
    offsets = (-policy.due_soon, timedelta(0), policy.to_president, policy.to_supervisor)
    if stage >= len(offsets):
        return None
    return due_at + offsets[stage]


def first_alert(due_at: datetime, now: datetime, policy: AlertPolicy) -> tuple[int, datetime | None]:
    """The alert stage of a step planned at ``now``, and when its first alert falls due.

    A step already inside its due-soon window when it is planned (R0 is due
    an hour after the opening, inside the two-hour window at once) gets no
    due-soon alert: the notice of what planned it (the case's opening) says
    the same thing a moment earlier. Its next alert is the overdue one."""
    if alert_time(0, due_at, policy) <= now:
        return 1, alert_time(1, due_at, policy)
    return 0, alert_time(0, due_at, policy)


def alerts_due(stage: int, due_at: datetime, now: datetime, policy: AlertPolicy) -> tuple[list[tuple[str, str]], int, datetime | None]:
    """The alerts to send now, the new stage, and when the next one is due.

    A sweep that ran late sends every alert that passed meanwhile, in order,
    each once."""
    sent = []
    while (moment := alert_time(stage, due_at, policy)) is not None and moment <= now:
        sent.append(ALERTS[stage])
        stage += 1
    return sent, stage, alert_time(stage, due_at, policy)


def restage(stage: int, old_due: datetime, new_due: datetime, now: datetime, policy: AlertPolicy) -> tuple[int, datetime | None]:
    """After a due time moved: keep the alerts already sent that still hold,
    and schedule the next one for the new due time."""
    if new_due == old_due:
        return stage, alert_time(stage, new_due, policy)
    passed = 0
    while (moment := alert_time(passed, new_due, policy)) is not None and moment <= now:
        passed += 1
    stage = min(stage, passed)
    return stage, alert_time(stage, new_due, policy)
