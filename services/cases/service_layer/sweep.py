"""The deadline sweep: alerts for plan steps that fall due soon, are
overdue, or must go up the ladder. Safe with any number of replicas, on
PostgreSQL and on SQLite: rows are claimed (``FOR UPDATE SKIP LOCKED``, or
SQLite's write lock taken up front), each step's alert stage moves only if it
is still the one read, and only the alerts of steps that moved are staged, in
the same transaction."""
from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from contracts.events import build_events
from servicekit import outbox
from services.cases.adapters import alerts as repository
from services.cases.adapters import orm
from services.cases.domain.deadlines import AlertPolicy, alert_role, alerts_due

log = logging.getLogger(__name__)

# A batch is one transaction and, in a green service process, one stretch of
# CPU that nothing else runs during (building and encoding its events): a few
# hundred alerts keep the cases opened meanwhile waiting a few tens of ms.
BATCH = 250
# SQLite has one writer at a time, and its calls block the whole process
SQLITE_BATCH = 100
BUSY_TRIES = 5


def sweep(sessions: sessionmaker, policy: AlertPolicy, *, now: datetime | None = None, batch: int = BATCH,
          headers: dict | None = None, counted=lambda kinds: None) -> int:
    """Send every alert that is due; returns how many alerts were staged.
    ``counted`` hears, after each committed batch, how many of each kind.
    Between batches the sweep lets the process's other work run (in a
    service, ``time.sleep`` is eventlet's), so a sweep that catches up on
    thousands of alerts never holds intake up for longer than one batch."""
    now = now or datetime.now(timezone.utc)
    with sessions() as session:
        if session.get_bind().dialect.name == "sqlite":
            batch = min(batch, SQLITE_BATCH)
    staged = 0
    busy = 0
    while True:
        try:
            claimed, took, kinds = _one_batch(sessions, policy, now, batch, headers)
        except OperationalError as error:
            # another process held SQLite's write lock past the busy timeout:
            # nothing of this batch was written; try it again a little later
            busy += 1
            if not repository.is_busy(error) or busy >= BUSY_TRIES:
                raise
            log.warning("deadline sweep waited for the database", extra={"tries": busy})
            time.sleep(0.05 * busy)
            continue
        staged += sum(kinds.values())
        if kinds:
            counted(kinds)
        if claimed < batch or not took:
            # nothing moved in a full batch: leave the rest to the next sweep
            # rather than claim the same rows again
            return staged
        time.sleep(0)  # the requests waiting meanwhile go first


def _one_batch(sessions: sessionmaker, policy: AlertPolicy, now: datetime, batch: int,
               headers: dict | None) -> tuple[int, int, Counter]:
    """One transaction: how many rows it claimed and moved, and the alerts it staged by kind."""
    with sessions() as session, session.begin():
        repository.begin(session)
        rows = repository.claim(session, now, batch)
        planned = {}
        changes = []
        for row in rows:
            due_at = row.due_at
            sent, stage, next_at = alerts_due(row.alert_stage, due_at, now, policy)
            planned[row.id] = (row, due_at, sent)
            changes.append(repository.Advance(row.id, row.alert_stage, row.next_alert_at, stage, next_at))
        took = repository.advance(session, changes)
        by_kind: dict[str, list[dict]] = {}
        for row, due_at, sent in planned.values():
            if row.id not in took:
                continue  # re-planned or swept since it was read: its alerts are not ours to send
            for kind, rung in sent:
                # the step's reference and one role, never its protocol id
                data = {"step_ref": row.ref, "due_at": due_at, "responsible": alert_role(row.responsible)}
                if kind == "step_escalated":
                    data["rung"] = rung
                by_kind.setdefault(kind, []).append(
                    {"organization_id": row.organization_id, "case_id": row.case_id, "occurred_at": now,
                     "data": data}
                )
        events = [event for kind, items in by_kind.items() for event in build_events(kind, items)]
        outbox.stage_many(session, orm.outbox, events, source="cases", headers=headers)
    return len(rows), len(took), Counter(_kind(e) for e in events)


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
