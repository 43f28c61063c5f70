"""The deadline sweep's SQL: claiming plan steps whose next alert is due, and
moving their alert stage only where nobody moved it since it was read."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, bindparam, cast, column, select, text, update, values
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
        select(t.c.id, t.c.case_id, t.c.organization_id, t.c.step_id, t.c.responsible, t.c.due_at,
               t.c.alert_stage, t.c.next_alert_at)
        .where(t.c.status == "open", t.c.next_alert_at.is_not(None), t.c.next_alert_at <= now)
        .order_by(t.c.next_alert_at)
        .limit(batch)
    )
    if session.bind.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return session.execute(query).all()


def advance(session: Session, changes: list[Advance]) -> set[int]:
    """Compare-and-set each step's stage on the values read; the ids whose
    update took. A step re-planned or swept meanwhile is left alone."""
    if not changes:
        return set()
    t = orm.plan_steps
    if session.bind.dialect.name == "postgresql":
        stamp = t.c.next_alert_at.type
        v = values(
            column("id", Integer), column("read_stage", Integer), column("read_next", stamp),
            column("stage", Integer), column("next_at", stamp), name="v",
        ).data([(c.row_id, c.read_stage, c.read_next, c.stage, c.next_at) for c in changes])
        took = session.execute(
            update(t)
            .where(t.c.id == v.c.id, t.c.status == "open", t.c.alert_stage == v.c.read_stage,
                   t.c.next_alert_at == cast(v.c.read_next, stamp))
            # a column of NULLs alone would be typed text
            .values(alert_stage=v.c.stage, next_alert_at=cast(v.c.next_at, stamp))
            .returning(t.c.id)
        ).scalars()
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
