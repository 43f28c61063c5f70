"""The services' PostgreSQL pool: a connection killed while it sat idle is
replaced before a transaction uses it, without a ping per transaction."""
from sqlalchemy import text

from servicekit import database


def _backend_pid(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar()


def test_a_connection_killed_while_idle_is_replaced_before_use(database_urls, engines, monkeypatch):
    engine = database.make_engine(database_urls["gateway"])
    try:
        first = _backend_pid(engine)
        assert _backend_pid(engine) == first  # in steady use: the same connection, not pinged away
        with engines["gateway"].connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar()
        monkeypatch.setattr(database, "IDLE_PING_SECONDS", 0.0)  # it has now been idle "long enough"

        second = _backend_pid(engine)  # no error: the dead one was found at checkout

        assert second != first
    finally:
        engine.dispose()


def test_without_the_idle_ping_the_dead_connection_fails_the_next_transaction(database_urls, engines, monkeypatch):
    """The contrast that shows the test above can fail: a connection used
    again within the idle window is not tested, and a kill shows."""
    engine = database.make_engine(database_urls["gateway"])
    try:
        first = _backend_pid(engine)
        with engines["gateway"].connect() as admin:
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
