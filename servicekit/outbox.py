"""Transactional outbox (design rule 4).

A state change and the events it causes are written in one transaction: the
event goes into this service's ``outbox`` table. The relay, running inside the
service process, publishes pending rows to RabbitMQ in three steps, and never
holds a database transaction while it talks to the broker:

1. **claim** a batch in a short transaction of its own: the rows get this
   pass's token and a lease (``claimed_until``); a row under another relay's
   live lease is skipped (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, one
   atomic UPDATE on SQLite), so any number of replicas relay side by side;
2. **publish** them in order, ``mandatory``, outside any transaction, then
   wait once for the broker's confirms of the whole batch (one round trip a
   batch, not one a row);
3. **mark** the confirmed ones published in a transaction of their own, and
   release the rest, so a publish that fails on the third row leaves the two
   before it marked, and the rest are tried again on the next pass. A row the
   broker returned (not even the alternate exchange took it) or refused
   stays pending; the rows after it that the broker took are marked.

The relay wakes when a transaction that staged events commits (a session
event of the service's session factory), so a committed event leaves within
milliseconds, and commits that land while a pass is running are taken by the
next pass together. A poll every ``POLL_INTERVAL`` seconds catches rows
written by other processes (the CLI, a replica that died before relaying).

A relay that dies between publishing and marking leaves its rows to be
claimed again once their lease ends: that row is published again, and
consumers drop the repeat by its ``event_id``.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import eventlet
from amqp.exceptions import MessageNacked
from kombu import Connection, Producer
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import DependencyProvider
from sqlalchemy import (
    Column, Index, Integer, MetaData, String, Table, Text, event, func, select, text, update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from servicekit import metrics
from servicekit.database import SqlEngine, insert_rows, is_postgres
from servicekit.topology import UNROUTED_QUEUE, declare, event_exchange
from servicekit.types import UtcDateTime

log = logging.getLogger(__name__)

# A publish that takes longer than this is treated as failed: the row stays
# pending and the relay reconnects, instead of holding its transaction open.
PUBLISH_TIMEOUT = 5.0
# How often a relay counts its backlog (a query) ...
MEASURE_SECONDS = 2.0
# ... and asks the broker how many events wait in ``unrouted``.
UNROUTED_MEASURE_SECONDS = 5.0
# Woken by a commit, the relay waits this long for the commits landing just
# after it, so that under load one pass (two short transactions and one
# confirm round trip) carries many events instead of one.
LINGER_SECONDS = 0.005
# the session flag that says "this transaction staged events"
STAGED = "warmi.outbox_staged"
# A claimed batch not marked within this time (its relay died) is claimed again.
CLAIM_LEASE = timedelta(seconds=60)


class Unroutable(Exception):
    """The broker returned a message: not even the alternate exchange took it."""


def outbox_table(metadata: MetaData) -> Table:
    return Table(
        "outbox",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("exchange", String(100), nullable=False),
        Column("routing_key", String(100), nullable=False),
        Column("body", Text, nullable=False),
        Column("headers", Text, nullable=False, default="{}"),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("published_at", UtcDateTime(), nullable=True),
        Column("claim", String(36), nullable=True),
        Column("claimed_until", UtcDateTime(), nullable=True),
        Index(
            "ix_outbox_pending",
            "id",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
        # retention deletes published rows by age
        Index(
            "ix_outbox_published",
            "published_at",
            postgresql_where=text("published_at IS NOT NULL"),
            sqlite_where=text("published_at IS NOT NULL"),
        ),
    )


def stage(session: Session, table: Table, envelope: dict, *, source: str, headers: dict | None = None) -> None:
    """Add ``envelope`` to the outbox inside the caller's transaction."""
    stage_many(session, table, [envelope], source=source, headers=headers)


_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per row


def stage_many(session: Session, table: Table, envelopes: list[dict], *, source: str, headers: dict | None = None) -> None:
    """Add many envelopes in one statement, inside the caller's transaction."""
    if not envelopes:
        return
    session.info[STAGED] = True  # the relay wakes when this transaction commits
    now = datetime.now(timezone.utc)
    encoded_headers = _encode(headers or {})
    exchange = f"{source}.events"
    insert_rows(session, table, [
        {
            "event_id": e["event_id"], "exchange": exchange, "routing_key": e["type"],
            "body": _encode(e), "headers": encoded_headers, "created_at": now,
        }
        for e in envelopes
    ])


class Relay:
    """Publishes pending outbox rows: claim, publish, mark (see above)."""

    def __init__(self, engine: Engine, table: Table, amqp_uri: str, service: str, batch_size: int = 200):
        self.engine = engine
        self.table = table
        self.amqp_uri = amqp_uri
        self.service = service
        self.batch_size = batch_size
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._next_tag = 1  # the delivery tag the broker gives the next publish
        self._batch_first_tag = 1
        self._settled: dict[int, bool] = {}  # this batch's delivery tags: confirmed (True) or refused (False)
        self._returned: set[str] = set()

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            conn = Connection(self.amqp_uri, connect_timeout=PUBLISH_TIMEOUT)
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=PUBLISH_TIMEOUT)
            # every (re)connection: a broker that restarted without its
            # definitions gets every consumer queue back before a publish
            declare(conn)
            channel = conn.channel()
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            self._connection = conn
            self._next_tag = 1
            self._settled.clear()
            self._producer = Producer(channel, on_return=self._on_return)
        return self._producer

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, True)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, False)

    def _settle(self, delivery_tag: int, multiple: bool, confirmed: bool) -> None:
        """Note the broker's answer for one publish, or for every one up to
        ``delivery_tag`` not answered yet (``multiple``)."""
        low = self._batch_first_tag if multiple else delivery_tag
        for tag in range(low, delivery_tag + 1):
            self._settled.setdefault(tag, confirmed)

    def _on_return(self, exception, exchange, routing_key, message) -> None:
        self._returned.add(message.properties.get("message_id"))

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # the broker may already be gone
                pass
        self._connection = None
        self._producer = None

    def relay_once(self) -> int:
        """Publish up to one batch; returns how many rows were published.

        Raises, after marking what the broker took, when the broker could not
        be reached, returned a row or refused one."""
        rows = self._claim()
        if not rows:
            return 0
        published: list[int] = []
        error: Exception | None = None
        try:
            published, error = self._publish_batch(rows)
        finally:
            # whatever the broker confirmed is marked, even if a later row failed
            done = set(published)
            self._finish(published, [row.id for row in rows if row.id not in done])
        if error is not None:
            raise error
        return len(published)

    def _publish_batch(self, rows: list) -> tuple[list[int], Exception | None]:
        """Publish ``rows`` in order, then wait for their confirms together.
        Returns the ids of the rows the broker took, and what went wrong."""
        producer = self._ensure_producer()
        self._batch_first_tag = first_tag = self._next_tag
        self._settled.clear()
        sent: list = []
        error: Exception | None = None
        try:
            for row in rows:
                self._publish(producer, row)
                self._next_tag += 1
                sent.append(row)
        except Exception as exc:
            error = exc
        try:
            # even after a failure: the rows before it may have been taken
            self._await_confirms(first_tag, len(sent))
        except Exception as exc:
            error = error or exc
        taken, returned, refused = [], set(), set()
        for tag, row in enumerate(sent, start=first_tag):
            confirmed = self._settled.get(tag)
            if row.event_id in self._returned:
                returned.add(row.routing_key)
            elif confirmed:
                taken.append(row.id)
            elif confirmed is False:
                refused.add(row.routing_key)
        self._returned.clear()
        if error is None and returned:
            error = Unroutable(", ".join(sorted(returned)))
        if error is None and refused:
            error = MessageNacked(", ".join(sorted(refused)))
        if error is not None:
            self.close()  # the next pass connects and declares the topology again
        return taken, error

    def _await_confirms(self, first_tag: int, count: int) -> None:
        """Read from the broker until every publish from ``first_tag`` on is
        confirmed or refused, at most ``PUBLISH_TIMEOUT`` seconds. A return
        arrives before the confirm of its message."""
        deadline = time.monotonic() + PUBLISH_TIMEOUT
        for tag in range(first_tag, first_tag + count):
            while tag not in self._settled:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout("publisher confirms")
                self._connection.drain_events(timeout=remaining)

    def _claim(self) -> list:
        """Take a batch: one statement that leases the rows and returns them."""
        t = self.table
        now = datetime.now(timezone.utc)
        token = str(uuid.uuid4())
        claimable = (t.c.published_at.is_(None)) & (t.c.claimed_until.is_(None) | (t.c.claimed_until < now))
        ids = select(t.c.id).where(claimable).order_by(t.c.id).limit(self.batch_size)
        if is_postgres(self.engine):
            ids = ids.with_for_update(skip_locked=True)
        with Session(self.engine) as session, session.begin():
            # the outer condition is checked again as each row is written, so
            # of two relays racing for a row only one takes it
            rows = session.execute(
                update(t).where(t.c.id.in_(ids.scalar_subquery()), claimable)
                .values(claim=token, claimed_until=now + CLAIM_LEASE)
                .returning(t.c.id, t.c.event_id, t.c.exchange, t.c.routing_key, t.c.body, t.c.headers)
            ).all()
        return sorted(rows, key=lambda row: row.id)

    def _finish(self, published: list[int], unpublished: list[int]) -> None:
        t = self.table
        with Session(self.engine) as session, session.begin():
            if published:
                session.execute(
                    update(t).where(t.c.id.in_(published))
                    .values(published_at=datetime.now(timezone.utc), claim=None, claimed_until=None)
                )
            if unpublished:
                session.execute(update(t).where(t.c.id.in_(unpublished)).values(claim=None, claimed_until=None))
        if published:
            metrics.OUTBOX_PUBLISHED.labels(self.service).inc(len(published))

    def _publish(self, producer: Producer, row) -> None:
        producer.publish(
            row.body.encode(),
            exchange=event_exchange(row.exchange.removesuffix(".events")),
            routing_key=row.routing_key,
            content_type="application/json",
            content_encoding="utf-8",
            headers=json.loads(row.headers or "{}"),
            message_id=row.event_id,
            delivery_mode=2,
            mandatory=True,
            declare=[],
            retry=False,
            timeout=PUBLISH_TIMEOUT,
        )

    def unrouted(self) -> int | None:
        """Messages waiting in the ``unrouted`` queue, if connected."""
        if self._connection is None:
            return None
        channel = self._connection.channel()
        try:
            _, count, _ = channel.queue_declare(UNROUTED_QUEUE, passive=True)
            return count
        finally:
            channel.close()

    def measure(self) -> tuple[int, float]:
        """Pending rows and the age in seconds of the oldest one."""
        t = self.table
        with Session(self.engine) as session:
            count, oldest = session.execute(
                select(func.count(), func.min(t.c.created_at)).where(t.c.published_at.is_(None))
            ).one()
        age = 0.0
        if oldest is not None:
            age = max(0.0, (datetime.now(timezone.utc) - oldest).total_seconds())
        return count, age


def wake_on_commit(sessions: sessionmaker, wake: threading.Event) -> None:
    """Set ``wake`` whenever a session of ``sessions`` commits a transaction
    that staged events (``stage_many`` flags it)."""

    def _committed(session: Session) -> None:
        if session.info.pop(STAGED, False):
            wake.set()

    def _rolled_back(session: Session, previous_transaction) -> None:
        if previous_transaction.parent is None:  # the rows went with it
            session.info.pop(STAGED, None)

    event.listen(sessions, "after_commit", _committed)
    event.listen(sessions, "after_soft_rollback", _rolled_back)


class OutboxRelay(DependencyProvider):
    """Runs the relay in a managed green thread of the service container.

    A commit of the container's sessions that staged events wakes it (see
    the module's docstring); workers that staged nothing (reads, health
    checks) cost the relay nothing. It counts its backlog on a timer.
    """

    engine = SqlEngine()

    def __init__(self, table: Table, **kwargs):
        self.table = table
        super().__init__(**kwargs)

    def setup(self) -> None:
        config = self.container.config
        settings = config.get("OUTBOX", {}) or {}
        self.amqp_uri = settings.get("AMQP_URI") or config[AMQP_URI_CONFIG_KEY]
        self.poll_interval = float(settings.get("POLL_INTERVAL", 1.0))
        self.max_backoff = float(settings.get("MAX_BACKOFF", 5.0))
        self.relay: Relay | None = None
        self._wake = threading.Event()
        self._unrouted_measured = 0.0
        self._running = False
        self._gt = None

    def start(self) -> None:
        # the shared engine is made in its own setup, which may run after ours
        self.relay = Relay(self.engine.engine, self.table, self.amqp_uri, self.container.service_name)
        wake_on_commit(self.engine.sessions, self._wake)
        self._running = True
        self._gt = self.container.spawn_managed_thread(self._run, identifier="outbox-relay")

    def stop(self) -> None:
        self._running = False
        self._wake.set()
        if self._gt is not None:
            self._gt.wait()
        if self.relay is not None:
            self.relay.close()

    def kill(self) -> None:
        self._running = False
        self._wake.set()
        if self.relay is not None:
            self.relay.close()

    def _run(self) -> None:
        backoff = 0.0
        last_measure = 0.0
        while self._running:
            try:
                published = self.relay.relay_once()
                backoff = 0.0
            except Exception as exc:  # broker or database away: keep the rows, try later
                metrics.OUTBOX_FAILURES.labels(self.container.service_name).inc()
                log.warning("outbox relay could not publish", extra={"error": type(exc).__name__})
                self.relay.close()
                backoff = min(self.max_backoff, max(0.1, backoff * 2))
                published = 0
            now = time.monotonic()
            if now - last_measure >= MEASURE_SECONDS:
                self._measure()
                last_measure = now
            if published >= self.relay.batch_size:
                continue
            if self._wake.wait(backoff or self.poll_interval) and not backoff:
                eventlet.sleep(LINGER_SECONDS)
            self._wake.clear()

    def _measure(self) -> None:
        service = self.container.service_name
        try:
            count, age = self.relay.measure()
            metrics.OUTBOX_PENDING.labels(service).set(count)
            metrics.OUTBOX_OLDEST_AGE.labels(service).set(age)
            now = time.monotonic()
            if now - self._unrouted_measured >= UNROUTED_MEASURE_SECONDS:
                self._unrouted_measured = now
                unrouted = self.relay.unrouted()
                if unrouted is not None:
                    metrics.UNROUTED.labels(service).set(unrouted)
        except Exception:
            return
