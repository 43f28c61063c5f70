"""Retention: rows that are only history (published outbox rows, handled-event
records, finished deliveries) are deleted once older than a configured period.

Deletion goes in small batches, one short transaction each, so intake never
waits long behind it; a batch deletes by key what it selected, re-checking the
condition, so replicas purging at once do no harm (PostgreSQL skips rows
another replica holds). A service lists its rules and runs ``Retention`` from
a timer:

    retention = Retention(Rule("outbox", orm.outbox, "published_at", "OUTBOX_DAYS", 7,
                               lambda t: t.c.published_at.is_not(None)))

    @configured_timer("RETENTION.INTERVAL_SECONDS", 3600)
    def purge_history(self) -> None:
        self.retention()
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from nameko.extensions import DependencyProvider
from sqlalchemy import Table, delete, select, tuple_
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.sql import ColumnElement

from servicekit import metrics
from servicekit.database import SqlEngine

log = logging.getLogger(__name__)

BATCH = 500


def purge(sessions: sessionmaker, table: Table, time_column: str, older_than: datetime, *,
          where: ColumnElement | None = None, batch: int = BATCH, deleted=lambda n: None) -> int:
    """Delete the rows of ``table`` whose ``time_column`` is before
    ``older_than`` (and that match ``where``), ``batch`` rows a transaction;
    returns how many. ``deleted`` hears each committed batch's count."""
    condition = table.c[time_column] < older_than
    if where is not None:
        condition = condition & where
    key = list(table.primary_key.columns)
    total = 0
    while True:
        with sessions() as session, session.begin():
            chosen = select(*key).where(condition).limit(batch)
            if session.get_bind().dialect.name == "postgresql":
                chosen = chosen.with_for_update(skip_locked=True)
            target = key[0] if len(key) == 1 else tuple_(*key)
            # the condition again: a row changed since it was chosen stays
            count = session.execute(delete(table).where(target.in_(chosen), condition)).rowcount
        total += count
        if count:
            deleted(count)
        if count < batch:
            return total
        time.sleep(0)  # let the process's other work in between batches


@dataclass(frozen=True)
class Rule:
    """Rows of ``table`` older than ``setting`` days (``default_days`` if not
    configured) by ``time_column``, and matching ``where`` (given the table)."""

    name: str
    table: Table
    time_column: str
    setting: str
    default_days: float
    where: Callable[[Table], ColumnElement] | None = None


class Retention(DependencyProvider):
    """The service's retention rules with their configured periods
    (``RETENTION: {OUTBOX_DAYS: .., ...}``); injects a callable that purges
    every table once."""

    engine = SqlEngine()

    def __init__(self, *rules: Rule):
        self.rules = rules

    def setup(self) -> None:
        settings = self.container.config.get("RETENTION") or {}
        self.batch = int(settings.get("BATCH") or BATCH)
        self.periods = {}
        for rule in self.rules:
            days = settings.get(rule.setting)
            self.periods[rule.name] = timedelta(days=rule.default_days if days in (None, "") else float(days))

    def get_dependency(self, worker_ctx) -> Callable[[], dict[str, int]]:
        return self.purge_all

    def purge_all(self, now: datetime | None = None) -> dict[str, int]:
        """One pass over every rule; how many rows each deleted."""
        now = now or datetime.now(timezone.utc)
        service = self.container.service_name
        done = {}
        for rule in self.rules:
            counter = metrics.RETENTION_DELETED.labels(service, rule.name)
            try:
                done[rule.name] = purge(
                    self.engine.sessions, rule.table, rule.time_column, now - self.periods[rule.name],
                    where=rule.where(rule.table) if rule.where else None, batch=self.batch, deleted=counter.inc,
                )
            except OperationalError as error:
                # SQLite's write lock stayed busy (or the database is away): the
                # rows wait for the next pass, nothing is half done
                log.warning("retention pass stopped", extra={"table": rule.name, "error": type(error.orig).__name__})
                done[rule.name] = 0
        if any(done.values()):
            log.info("old rows deleted", extra={"deleted": done})
        return done


def published_outbox(table: Table, default_days: float = 7) -> Rule:
    """Outbox rows the broker confirmed; a row not yet published is kept however old."""
    return Rule("outbox", table, "published_at", "OUTBOX_DAYS", default_days,
                lambda t: t.c.published_at.is_not(None))


def handled_events(table: Table, default_days: float = 30) -> Rule:
    """A consumer's record of the events it handled. Kept far longer than any
    retry (about 21 minutes) or a dead letter's replay days later may bring a
    repeat, which the record turns into a no-op."""
    return Rule("processed_events", table, "processed_at", "PROCESSED_EVENTS_DAYS", default_days)
