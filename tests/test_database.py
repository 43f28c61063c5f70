"""The services' PostgreSQL pool: a connection killed while it sat idle is
replaced before a transaction uses it, without a ping per transaction."""
from sqlalchemy import text

from servicekit import database


def _backend_pid(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar()


def test_a_connection_killed_while_idle_is_replaced_before_use(database_urls, engines, monkeypatch):
    engine = database.make_engine(database_urls["identity"])
    try:
        first = _backend_pid(engine)
        assert _backend_pid(engine) == first  # in steady use: the same connection, not pinged away
        with engines["identity"].connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar()
        monkeypatch.setattr(database, "IDLE_PING_SECONDS", 0.0)  # it has now been idle "long enough"

        second = _backend_pid(engine)  # no error: the dead one was found at checkout

        assert second != first
    finally:
        engine.dispose()


def test_without_the_idle_ping_the_dead_connection_fails_the_next_transaction(database_urls, engines, monkeypatch):
    """The contrast that shows the test above can fail: a connection used
    again within the idle window is not tested, and a kill shows."""
    engine = database.make_engine(database_urls["identity"])
    try:
        first = _backend_pid(engine)
        with engines["identity"].connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        monkeypatch.setattr(database, "IDLE_PING_SECONDS", 3600.0)
        try:
            _backend_pid(engine)
        except Exception as exc:
            assert "terminat" in str(exc) or "closed" in str(exc)
        else:
            raise AssertionError("a killed connection was used without error")
        assert _backend_pid(engine) != first  # and the pool replaced it
    finally:
        engine.dispose()


def test_insert_rows_on_postgresql_keeps_the_order_and_each_columns_type(database_urls, clean_databases):
    """A batch goes as arrays to one statement: ids follow the order given,
    and each column's type still checks its values (no naive time slips in)."""
    from datetime import datetime, timezone

    import pytest
    from sqlalchemy.exc import StatementError
    from sqlalchemy.orm import Session

    from services.cases.adapters import orm

    engine = database.make_engine(database_urls["cases"])
    at = datetime(2026, 11, 23, 15, 0, tzinfo=timezone.utc)
    rows = [{"event_id": f"e{n}", "exchange": "cases.events", "routing_key": "case_opened", "body": "{}",
             "headers": "{}", "created_at": at} for n in (3, 1, 2)]
    try:
        with Session(engine) as session:
            database.insert_rows(session, orm.outbox, rows)
            session.commit()
            stored = session.execute(text("SELECT event_id, created_at FROM outbox ORDER BY id")).all()
            assert [r.event_id for r in stored] == ["e3", "e1", "e2"]
            assert {r.created_at for r in stored} == {at}

            naive = [dict(row, event_id=f"n{n}", created_at=at.replace(tzinfo=None)) for n, row in enumerate(rows)]
            with pytest.raises(StatementError):
                database.insert_rows(session, orm.outbox, naive)
    finally:
        engine.dispose()
