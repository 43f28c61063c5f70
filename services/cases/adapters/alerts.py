"""The deadline sweep's SQL: claiming plan steps whose next alert is due, and
moving their alert stage only where nobody moved it since it was read."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from services.cases.adapters import orm


@dataclass(frozen=True)
class Advance:
    """Move step ``row_id`` from the stage it was read at to ``stage``."""

    row_id: int
    read_stage: int
    read_next: datetime
    stage: int
    next_at: datetime | None


def begin(session: Session) -> None:
    """Start a sweep transaction. SQLite takes its write lock up front: a
    deferred transaction that read first would meet "database is locked" at
    once when another process had committed meanwhile, instead of waiting."""
    if session.bind.dialect.name == "sqlite":
        session.execute(text("BEGIN IMMEDIATE"))


def is_busy(error: OperationalError) -> bool:
    """SQLite gave up waiting for another process's write lock."""
    message = str(error.orig).lower()
    return "database is locked" in message or "database is busy" in message


def claim(session: Session, now: datetime, batch: int) -> list:
    """Open steps whose next alert is due, oldest first. PostgreSQL locks them
    and skips rows another replica holds; SQLite holds the database's write lock."""
    t = orm.plan_steps
    query = (
        select(t.c.id, t.c.case_id, t.c.organization_id, t.c.ref, t.c.responsible, t.c.due_at,
               t.c.alert_stage, t.c.next_alert_at)
        .where(t.c.status == "open", t.c.next_alert_at.is_not(None), t.c.next_alert_at <= now)
        .order_by(t.c.next_alert_at)
        .limit(batch)
    )
    if session.bind.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return session.execute(query).all()


_ADVANCE_POSTGRESQL = text("""
    UPDATE plan_steps AS t SET alert_stage = v.stage, next_alert_at = v.next_at
    FROM unnest(CAST(:ids AS integer[]), CAST(:read_stages AS integer[]), CAST(:read_next AS timestamptz[]),
                CAST(:stages AS integer[]), CAST(:next_at AS timestamptz[]))
         AS v(id, read_stage, read_next, stage, next_at)
    WHERE t.id = v.id AND t.status = 'open' AND t.alert_stage = v.read_stage AND t.next_alert_at = v.read_next
    RETURNING t.id
""")


def advance(session: Session, changes: list[Advance]) -> set[int]:
    """Compare-and-set each step's stage on the values read; the ids whose
    update took. A step re-planned or swept meanwhile is left alone."""
    if not changes:
        return set()
    t = orm.plan_steps
    if session.bind.dialect.name == "postgresql":
        # one statement of constant text, the batch passed as arrays: a VALUES
        # list of thousands of rows would be compiled anew for every batch,
        # which cost more than the update itself
        took = session.execute(_ADVANCE_POSTGRESQL, {
            "ids": [c.row_id for c in changes], "read_stages": [c.read_stage for c in changes],
            "read_next": [c.read_next for c in changes], "stages": [c.stage for c in changes],
            "next_at": [c.next_at for c in changes],
        }).scalars()
        return set(took)
    # SQLite has no VALUES list with named columns to update from; statements
    # are calls into the library here, not round trips
    statement = (
        update(t)
        .where(t.c.id == bindparam("row_id"), t.c.status == "open", t.c.alert_stage == bindparam("read_stage"),
               t.c.next_alert_at == bindparam("read_next", type_=t.c.next_alert_at.type))
        .values(alert_stage=bindparam("stage"), next_alert_at=bindparam("next_at", type_=t.c.next_alert_at.type))
    )
    took = set()
    for c in changes:
        result = session.execute(statement, {"row_id": c.row_id, "read_stage": c.read_stage,
                                             "read_next": c.read_next, "stage": c.stage, "next_at": c.next_at})
        if result.rowcount == 1:
            took.add(c.row_id)
    return took
