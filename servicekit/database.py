"""One SQLAlchemy engine per service process, one session per nameko worker.

The engine is a ``SharedExtension`` so that every provider of a container
(the ``Database`` a service method uses, the outbox relay) shares one pool.
"""
from __future__ import annotations

import functools
import logging
import re
import time

from nameko.extensions import DependencyProvider, SharedExtension
from sqlalchemy import Table, bindparam, create_engine, event, insert, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from servicekit.config import database_url

log = logging.getLogger(__name__)

# A pooled PostgreSQL connection idle longer than this is tested before use;
# one in steady use is not (a round trip per transaction, see below).
IDLE_PING_SECONDS = 10.0
# ... and none is kept longer than this (a server or proxy drops old ones).
RECYCLE_SECONDS = 1800


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg2 here: psycopg 3 would block eventlet's hub
    (and SQLAlchemy 2.1 picks psycopg 3 for a bare ``postgresql://``)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, green: bool = False) -> Engine:
    """An engine for ``url``; ``green`` makes psycopg2 cooperate with eventlet.

    Bound values are survivor data: the engine never shows them. Its errors
    say "[SQL parameters hidden]" (``hide_parameters``), PostgreSQL's own
    messages lose the values they quote (``withhold_values``), and SQLAlchemy
    never logs statements or rows, whatever the root logger's level."""
    url = normalize_url(url)
    quiet_engine_logs()
    if url.startswith("sqlite"):
        # SQLite blocks the whole process while it waits for a lock, so one
        # connection per process, handed out in turn by a (green) pool.
        engine = create_engine(
            url,
            hide_parameters=True,
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=30,
            connect_args={"check_same_thread": False, "timeout": 15},
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if green:
        from psycogreen.eventlet import patch_psycopg

        patch_psycopg()
    # values_plus_batch: executemany UPDATEs go out in pages, not one round trip a row
    engine = create_engine(
        url, pool_size=10, max_overflow=10, pool_recycle=RECYCLE_SECONDS, executemany_mode="values_plus_batch",
        hide_parameters=True,
    )
    ping_when_idle(engine)
    event.listen(engine, "handle_error", _withhold_values)
    return engine


def quiet_engine_logs() -> None:
    """SQLAlchemy logs every statement at INFO and every row at DEBUG when
    its logger inherits such a level (``LOG_LEVEL=DEBUG``): rows hold survivor data."""
    for name in ("sqlalchemy.engine", "sqlalchemy.orm"):
        if logging.getLogger(name).getEffectiveLevel() < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)


_QUOTED = re.compile(r'"(?:[^"]|"")*"')


def withheld_message(orig: BaseException) -> str:
    """PostgreSQL's message for an error without the values it quotes: its
    DETAIL repeats a row or key ("Key (idempotency_key)=(...)"), its first
    line the value it could not read ('invalid input syntax for type uuid:
    "..."'). What is left: the first line with every quoted part withheld,
    the SQLSTATE and the names of the table, column and constraint."""
    diag = getattr(orig, "diag", None)
    text_ = str(orig)
    primary = (getattr(diag, "message_primary", None) or (text_.splitlines() or [""])[0])
    named = [f"{label} {value}" for label, value in (
        ("table", getattr(diag, "table_name", None)), ("column", getattr(diag, "column_name", None)),
        ("constraint", getattr(diag, "constraint_name", None))) if value]
    code = getattr(orig, "pgcode", None)
    details = "; ".join(([f"SQLSTATE {code}"] if code else []) + named)
    return f"{_QUOTED.sub('<withheld>', primary)} ({details}; values withheld)" if details else \
        f"{_QUOTED.sub('<withheld>', primary)} (values withheld)"


def _withhold_values(context) -> None:
    """``handle_error``: the DBAPI error and SQLAlchemy's wrapper of it say
    what went wrong without a value, in the message, a traceback or an RPC
    error's text."""
    orig = context.original_exception
    try:
        message = withheld_message(orig)
        orig.args = (message,)
    except Exception:  # never let the scrub hide the error itself
        return
    wrapper = context.sqlalchemy_exception
    if wrapper is not None and getattr(wrapper, "orig", None) is orig:
        wrapper.args = (f"({type(orig).__module__}.{type(orig).__name__}) {message}",)


def ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection before use only when it sat idle.

    ``pool_pre_ping`` costs a round trip at the start of every transaction,
    under load the same as the work itself. A connection in steady use has
    just proved itself; one that sat in the pool (through a database restart,
    say) is pinged, and a dead one is replaced before the transaction starts:
    raising ``DisconnectionError`` at checkout makes the pool open a fresh
    connection. A disconnect met mid-transaction still fails that unit of
    work, and SQLAlchemy then replaces every connection of the pool.
    """

    @event.listens_for(engine, "checkin")
    def _idle_since(dbapi_conn, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn, record, proxy):
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_conn.rollback()  # psycopg2 opened a transaction for the ping
        except Exception as exc:
            raise DisconnectionError(type(exc).__name__) from None


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def insert_rows(session: Session, table: Table, rows: list[dict]) -> None:
    """Insert ``rows`` (dicts with the same keys) in one statement, in order.

    On PostgreSQL a batch goes as one array per column to an ``INSERT …
    SELECT FROM unnest(…)`` of constant text: SQLAlchemy's multi-row insert
    compiles and binds it row by row, which cost more than the insert. Each
    column's own type still processes its values; serial ids follow the order
    of ``rows``."""
    if not rows:
        return
    if len(rows) > 1 and session.get_bind().dialect.name == "postgresql":
        columns = tuple(rows[0])
        session.execute(_unnest_insert(table, columns),
                        {f"c{i}": [row[name] for row in rows] for i, name in enumerate(columns)})
        return
    session.execute(insert(table), rows)


@functools.lru_cache(maxsize=64)
def _unnest_insert(table: Table, columns: tuple[str, ...]):
    dialect = postgresql.dialect()
    arrays = ", ".join(f"CAST(:c{i} AS {table.c[name].type.compile(dialect=dialect)}[])"
                       for i, name in enumerate(columns))
    names = ", ".join(columns)
    values = ", ".join(f"v.c{i}" for i in range(len(columns)))
    aliases = ", ".join(f"c{i}" for i in range(len(columns)))
    return text(
        f"INSERT INTO {table.name} ({names}) SELECT {values} "
        f"FROM unnest({arrays}) WITH ORDINALITY AS v({aliases}, n) ORDER BY v.n"
    ).bindparams(*(bindparam(f"c{i}", type_=postgresql.ARRAY(table.c[name].type)) for i, name in enumerate(columns)))


class SqlEngine(SharedExtension):
    """The container's engine, made in ``setup`` and disposed of on stop."""

    engine: Engine

    def setup(self) -> None:
        service = self.container.service_name
        url = self.container.config.get("DATABASE_URL") or database_url(service)
        self.engine = make_engine(url, green=True)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def stop(self) -> None:
        self.engine.dispose()

    def kill(self) -> None:
        self.engine.dispose()


class Database(DependencyProvider):
    """Injects a session factory bound to the service's engine.

    Each worker gets its own ``WorkerSession``, opened on first use. The
    service layer commits its own units of work; this provider never commits
    behind its back. nameko replies to an RPC or acks an event *before* the
    providers hear the worker's result, so a commit here would make work
    durable only after it was acknowledged. Whatever a worker leaves
    uncommitted is rolled back when it ends.
    """

    engine = SqlEngine()

    def get_dependency(self, worker_ctx) -> "WorkerSession":
        return WorkerSession(self.engine.sessions)

    def worker_teardown(self, worker_ctx) -> None:
        session = worker_ctx.service.__dict__.get(self.attr_name)
        if session is not None:
            session.close()  # rolls back anything left


class WorkerSession:
    """A lazily opened session plus the factory, for units of work that need
    to commit several times inside one worker (one e-mail, one commit)."""

    def __init__(self, factory: sessionmaker):
        self.factory = factory
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self.factory()
        return self._session

    def read(self):
        """A connection outside any transaction, for one read (``with
        worker_session.read() as conn``): on PostgreSQL a single round trip,
        without the BEGIN and ROLLBACK of a transaction around it."""
        return self.factory.kw["bind"].connect().execution_options(isolation_level="AUTOCOMMIT")

    def commit(self) -> None:
        if self._session is not None:
            self._session.commit()

    def rollback(self) -> None:
        if self._session is not None:
            self._session.rollback()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
