"""Inbox: which events a consumer has already handled (design rule 4).

A consumer records the ``event_id`` in the same transaction as its effect; the
primary key turns a repeat into a no-op. ``claim`` does it first thing, so a
copy of the same event handled at the same moment waits on the row (on
PostgreSQL) or finds it, and does nothing.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Column, Index, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from servicekit.types import UtcDateTime


def inbox_table(metadata: MetaData) -> Table:
    return Table(
        "processed_events",
        metadata,
        Column("event_id", String(36), primary_key=True),
        Column("handler", String(100), primary_key=True),
        Column("processed_at", UtcDateTime(), nullable=False),
        Index("ix_processed_events_processed_at", "processed_at"),  # retention deletes by age
    )


def seen(session: Session, table: Table, event_id: str, handler: str) -> bool:
    row = session.execute(
        select(table.c.event_id).where(table.c.event_id == event_id, table.c.handler == handler)
    ).first()
    return row is not None


def record(session: Session, table: Table, event_id: str, handler: str) -> None:
    session.execute(
        insert(table).values(event_id=event_id, handler=handler, processed_at=datetime.now(timezone.utc))
    )


def claim(session: Session, table: Table, event_id: str, handler: str) -> bool:
    """Record the event as handled inside the caller's transaction, which
    must then carry the effect. False if it was handled already (or by a
    concurrent copy that committed first): do nothing then."""
    try:
        with session.begin_nested():
            record(session, table, event_id, handler)
    except IntegrityError:
        return False
    return True
