"""Inbox: which events a consumer has already handled (design rule 4).

A consumer records the ``event_id`` in the same transaction as its effect; the
primary key turns a repeat into a no-op.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Column, DateTime, MetaData, String, Table, insert, select
from sqlalchemy.orm import Session


def inbox_table(metadata: MetaData) -> Table:
    return Table(
        "processed_events",
        metadata,
        Column("event_id", String(36), primary_key=True),
        Column("handler", String(100), primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False),
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
