"""The deadline sweep: alerts for plan steps that fall due soon, are
overdue, or must go up the ladder. Safe with any number of replicas: rows are
claimed with ``FOR UPDATE SKIP LOCKED`` and their alert stage moves in the
same transaction as the events it causes."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from contracts.events import build_events
from servicekit import outbox
from services.cases.adapters import orm
from services.cases.domain.deadlines import AlertPolicy, alerts_due


def sweep(sessions: sessionmaker, policy: AlertPolicy, *, now: datetime | None = None, batch: int = 1000,
          headers: dict | None = None, counted=lambda kinds: None) -> int:
    """Send every alert that is due; returns how many alerts were staged.
    ``counted`` hears, after each committed batch, how many of each kind."""
    now = now or datetime.now(timezone.utc)
    staged = 0
    while True:
        with sessions() as session, session.begin():
            rows = _claim(session, now, batch)
            if not rows:
                return staged
            by_kind: dict[str, list[dict]] = {}
            changes = []
            for row in rows:
                due_at = row.due_at
                alerts, stage, next_at = alerts_due(row.alert_stage, due_at, now, policy)
                for kind, rung in alerts:
                    data = {"step_id": row.step_id, "due_at": due_at, "responsible": row.responsible.split(",")}
                    if kind == "step_escalated":
                        data["rung"] = rung
                    by_kind.setdefault(kind, []).append(
                        {"organization_id": row.organization_id, "case_id": row.case_id, "occurred_at": now,
                         "data": data}
                    )
                changes.append({"row_id": row.id, "stage": stage, "next_at": next_at})
            events = [event for kind, items in by_kind.items() for event in build_events(kind, items)]
            outbox.stage_many(session, orm.outbox, events, source="cases", headers=headers)
            kinds = Counter(_kind(e) for e in events)
            t = orm.plan_steps
            session.execute(
                update(t).where(t.c.id == bindparam("row_id")).values(
                    alert_stage=bindparam("stage"), next_alert_at=bindparam("next_at")
                ),
                changes,
            )
            staged += len(events)
        counted(kinds)
        if len(rows) < batch:
            return staged


def _kind(event: dict) -> str:
    if event["type"] == "step_escalated":
        return "escalated_" + event["data"]["rung"]
    return event["type"].removeprefix("step_")


def overdue_steps(sessions: sessionmaker, now: datetime | None = None) -> int:
    """How many open steps are past their due time (an operator's gauge)."""
    t = orm.plan_steps
    with sessions() as session:
        return session.execute(
            select(func.count()).select_from(t).where(t.c.status == "open", t.c.due_at < (now or datetime.now(timezone.utc)))
        ).scalar()


def _claim(session: Session, now: datetime, batch: int) -> list:
    t = orm.plan_steps
    query = (
        select(t.c.id, t.c.case_id, t.c.organization_id, t.c.step_id, t.c.responsible, t.c.due_at, t.c.alert_stage)
        .where(t.c.status == "open", t.c.next_alert_at.is_not(None), t.c.next_alert_at <= now)
        .order_by(t.c.next_alert_at)
        .limit(batch)
    )
    if session.bind.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return session.execute(query).all()
