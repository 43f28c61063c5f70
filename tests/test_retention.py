"""Retention deletes history past its period, in batches, and nothing else:
never an unpublished event, a delivery still pending, sending or failed, or a
recent record."""
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from prometheus_client import REGISTRY
from sqlalchemy import event, insert, select, func
from sqlalchemy.orm import sessionmaker

from servicekit.retention import Retention, handled_events, published_outbox
from services.cases.adapters import orm as cases_orm
from services.notifications.adapters import orm as notifications_orm
from services.notifications.adapters.retention import finished_deliveries
from services.referrals.adapters import orm as referrals_orm
from tests.conftest import wait_until

NOW = datetime.now(timezone.utc)
OLD = NOW - timedelta(days=400)  # past every default period
RECENT = NOW - timedelta(days=3)  # inside every default period
BATCH = 500


def outbox_rows(n: int, *, created: datetime, published: datetime | None) -> list[dict]:
    return [{"event_id": str(uuid.uuid4()), "exchange": "cases.events", "routing_key": "case_updated",
             "body": "{}", "headers": "{}", "created_at": created, "published_at": published} for _ in range(n)]


def handled_rows(n: int, at: datetime) -> list[dict]:
    return [{"event_id": str(uuid.uuid4()), "handler": "handle_case_opened", "processed_at": at} for _ in range(n)]


def delivery_rows(n: int, status: str, at: datetime) -> list[dict]:
    return [{"event_id": str(uuid.uuid4()), "event_type": "case_opened", "organization_id": str(uuid.uuid4()),
             "case_id": str(uuid.uuid4()), "recipient_id": str(uuid.uuid4()), "recipient_role": "president",
             "channel": "email", "status": status, "attempts": 1, "created_at": at,
             "sent_at": at if status == "sent" else None, "notice_id": str(uuid.uuid4())} for _ in range(n)]


def seed(engines) -> None:
    with engines["cases"].begin() as conn:
        conn.execute(insert(cases_orm.outbox), outbox_rows(1100, created=OLD, published=OLD + timedelta(seconds=1))
                     + outbox_rows(5, created=RECENT, published=RECENT)
                     + outbox_rows(3, created=OLD, published=None))  # never published: kept however old
        conn.execute(insert(cases_orm.processed_events), handled_rows(1050, OLD) + handled_rows(5, RECENT))
    with engines["notifications"].begin() as conn:
        conn.execute(insert(notifications_orm.deliveries),
                     delivery_rows(600, "sent", OLD) + delivery_rows(500, "cancelled", OLD)
                     + delivery_rows(2, "pending", OLD) + delivery_rows(2, "sending", OLD)
                     + delivery_rows(2, "failed", OLD)  # its event is still being retried
                     + delivery_rows(3, "sent", NOW - timedelta(days=200)))  # history still shown with the case
        conn.execute(insert(notifications_orm.processed_events), handled_rows(520, OLD) + handled_rows(3, RECENT))
    with engines["referrals"].begin() as conn:
        conn.execute(insert(referrals_orm.outbox), outbox_rows(510, created=OLD, published=OLD)
                     + outbox_rows(2, created=RECENT, published=RECENT) + outbox_rows(2, created=OLD, published=None))


def retention(service: str, engine, *rules, **settings) -> Retention:
    """The service's ``Retention`` as its container would set it up."""
    made = Retention(*rules)
    made.container = SimpleNamespace(service_name=service, config={"RETENTION": {"BATCH": BATCH, **settings}})
    made.engine = SimpleNamespace(sessions=sessionmaker(engine))
    made.setup()
    return made


def count(engine, table, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar()


def deleted_metric(service: str, table: str) -> float:
    return REGISTRY.get_sample_value("warmi_retention_deleted_total", {"service": service, "table": table}) or 0


def test_retention_deletes_old_history_in_batches_and_keeps_recent_and_unfinished_rows(backend, backend_engines):
    engines = backend_engines
    seed(engines)
    statements = []

    def remember(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("DELETE"):
            statements.append(statement.split()[2].strip('"'))  # the table

    passes = {
        "cases": retention("cases", engines["cases"], published_outbox(cases_orm.outbox),
                           handled_events(cases_orm.processed_events)),
        "notifications": retention("notifications", engines["notifications"],
                                   handled_events(notifications_orm.processed_events),
                                   finished_deliveries(notifications_orm.deliveries)),
        "referrals": retention("referrals", engines["referrals"], published_outbox(referrals_orm.outbox)),
    }
    before = {(s, t): deleted_metric(s, t) for s in passes for t in ("outbox", "processed_events", "deliveries")}
    for engine in engines.values():
        event.listen(engine, "before_cursor_execute", remember)
    try:
        done = {service: made.purge_all() for service, made in passes.items()}
    finally:
        for engine in engines.values():
            event.remove(engine, "before_cursor_execute", remember)

    assert done == {
        "cases": {"outbox": 1100, "processed_events": 1050},
        "notifications": {"processed_events": 520, "deliveries": 1100},
        "referrals": {"outbox": 510},
    }
    # what is left: recent rows, unpublished events, unfinished deliveries
    outbox = cases_orm.outbox
    assert count(engines["cases"], outbox) == 8
    assert count(engines["cases"], outbox, outbox.c.published_at.is_(None)) == 3
    assert count(engines["cases"], cases_orm.processed_events) == 5
    deliveries = notifications_orm.deliveries
    left = {}
    with engines["notifications"].connect() as conn:
        for status, n in conn.execute(select(deliveries.c.status, func.count()).group_by(deliveries.c.status)):
            left[status] = n
    assert left == {"pending": 2, "sending": 2, "failed": 2, "sent": 3}
    assert count(engines["notifications"], notifications_orm.processed_events) == 3
    assert count(engines["referrals"], referrals_orm.outbox) == 4
    assert count(engines["referrals"], referrals_orm.outbox, referrals_orm.outbox.c.published_at.is_(None)) == 2

    # a few hundred rows a statement, each its own short transaction
    assert statements.count("outbox") >= 3 + 2  # 1100 rows of cases, 510 of referrals
    assert statements.count("deliveries") >= 3
    for (service, table), value in before.items():
        assert deleted_metric(service, table) - value == done[service].get(table, 0)

    # a second pass, or a replica's at the same moment, finds nothing more
    assert {service: made.purge_all() for service, made in passes.items()} == {
        "cases": {"outbox": 0, "processed_events": 0},
        "notifications": {"processed_events": 0, "deliveries": 0},
        "referrals": {"outbox": 0},
    }


def test_periods_come_from_configuration(backend, backend_engines):
    engine = backend_engines["cases"]
    with engine.begin() as conn:
        conn.execute(insert(cases_orm.outbox), outbox_rows(4, created=NOW - timedelta(days=3),
                                                           published=NOW - timedelta(days=3)))
    made = retention("cases", engine, published_outbox(cases_orm.outbox), OUTBOX_DAYS=5)
    assert made.purge_all() == {"outbox": 0}
    made = retention("cases", engine, published_outbox(cases_orm.outbox), OUTBOX_DAYS="2")
    assert made.purge_all() == {"outbox": 4}


def test_the_running_services_purge_on_their_timer(any_stack):
    engines = any_stack.engines
    seed(engines)
    fast = {"RETENTION": {"INTERVAL_SECONDS": 0.2}}
    any_stack.start_all(cases=fast, notifications=fast, referrals=fast)

    def purged():
        return (count(engines["cases"], cases_orm.outbox) == 8
                and count(engines["cases"], cases_orm.processed_events) == 5
                and count(engines["notifications"], notifications_orm.deliveries) == 9
                and count(engines["notifications"], notifications_orm.processed_events) == 3
                and count(engines["referrals"], referrals_orm.outbox) == 4)

    wait_until(purged, timeout=60, interval=0.2, message="every service's timer to purge its history")
