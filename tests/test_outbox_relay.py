"""The outbox relay: several replicas publish each row once; a failed publish
leaves the rows before it marked, and the rest for the next pass."""
import json
from datetime import datetime, timezone

import eventlet
from kombu import Connection, Queue
from sqlalchemy import text
from sqlalchemy.orm import Session

from contracts.events import build_event
from servicekit import outbox
from servicekit.database import make_engine
from servicekit.topology import event_exchange
from services.cases.adapters import orm


def test_three_relays_at_once_publish_every_row_exactly_once(vhost, database_urls, clean_databases):
    engine = make_engine(database_urls["cases"], green=True)
    rows = 600
    with Session(engine) as session:
        for n in range(rows):
            envelope = build_event(
                "case_opened",
                organization_id="0c9a3c1e-5f0b-4f7e-8d3a-6b2e1f4c9d70",
                case_id="5e1d7c2a-9b3f-4e68-a0d4-c7f2b8e91a36",
                data={"survivor_code": f"CEC-2026-{n:04d}", "opened_by": "a3f9e2c1-7b4d-4c8e-9f1a-2d6b5e0c8f47",
                      "opened_at": datetime(2026, 11, 20, 14, 5, tzinfo=timezone.utc)},
            )
            outbox.stage(session, orm.outbox, envelope, source="cases")
        session.commit()
    exchange = event_exchange("cases")
    sink = Queue("relay-test", exchange=exchange, routing_key="case_opened", durable=True)
    with Connection(vhost) as conn:
        exchange(conn.default_channel).declare()
        sink(conn.default_channel).declare()

    relays = [outbox.Relay(engine, orm.outbox, vhost, "cases", batch_size=50) for _ in range(3)]

    def drain(relay):
        published = 0
        while (n := relay.relay_once()) > 0:
            published += n
        relay.close()
        return published

    pool = eventlet.GreenPool()
    counts = list(pool.imap(drain, relays))

    assert sum(counts) == rows  # which replica took how many is the scheduler's business
    ids = []
    with Connection(vhost) as conn:
        channel = conn.channel()
        while (message := channel.basic_get("relay-test", no_ack=True)) is not None:
            ids.append(json.loads(message.body)["event_id"])
        channel.close()
    assert len(ids) == rows
    assert len(set(ids)) == rows
    assert relays[0].measure()[0] == 0
    engine.dispose()


def test_a_publish_failing_on_the_third_row_leaves_the_two_before_it_published_once(vhost, backend_engines):
    engine = backend_engines["cases"]
    envelopes = [
        build_event(
            "case_opened", organization_id="0c9a3c1e-5f0b-4f7e-8d3a-6b2e1f4c9d70",
            case_id="5e1d7c2a-9b3f-4e68-a0d4-c7f2b8e91a36",
            data={"survivor_code": f"CEC-2026-{n:04d}", "opened_by": "a3f9e2c1-7b4d-4c8e-9f1a-2d6b5e0c8f47",
                  "opened_at": datetime(2026, 11, 20, 14, 5, tzinfo=timezone.utc)},
        )
        for n in range(5)
    ]
    with Session(engine) as session:
        outbox.stage_many(session, orm.outbox, envelopes, source="cases")
        session.commit()

    class BrokerFailsOnTheThirdRow(outbox.Relay):
        calls = 0

        def _publish(self, producer, row):
            self.calls += 1
            if self.calls == 3:
                raise ConnectionResetError("the broker went away")
            super()._publish(producer, row)

    relay = BrokerFailsOnTheThirdRow(engine, orm.outbox, vhost, "cases")
    try:
        relay.relay_once()
    except ConnectionResetError:
        pass
    else:
        raise AssertionError("the third publish should have failed")
    finally:
        relay.close()

    def published():
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT event_id FROM outbox WHERE published_at IS NOT NULL "
                                                    "ORDER BY id"))]

    first_two = [e["event_id"] for e in envelopes[:2]]
    assert published() == first_two
    with engine.connect() as conn:  # the rest is free for the next pass at once, not after a lease
        assert conn.execute(text("SELECT count(*) FROM outbox WHERE claim IS NOT NULL")).scalar() == 0

    again = outbox.Relay(engine, orm.outbox, vhost, "cases")
    try:
        assert again.relay_once() == 3
    finally:
        again.close()
    assert published() == [e["event_id"] for e in envelopes]
    queue = "evt-cases-case_opened--notifications.handle_case_opened"
    with Connection(vhost) as conn:
        channel = conn.channel()
        ids = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            ids.append(json.loads(message.body)["event_id"])
        channel.close()
    assert ids == [e["event_id"] for e in envelopes]  # each exactly once, in order


def test_a_row_the_broker_returns_stays_pending_and_the_rows_around_it_are_published(vhost, backend_engines):
    """One batch, one confirm wait: the broker returns the middle row (no
    queue at all took it); the two it confirmed are marked, the returned one
    goes out on the next pass, once the relay has declared ``unrouted`` again."""
    engine = backend_engines["cases"]

    def envelope(n):
        return build_event(
            "case_opened", organization_id="0c9a3c1e-5f0b-4f7e-8d3a-6b2e1f4c9d70",
            case_id="5e1d7c2a-9b3f-4e68-a0d4-c7f2b8e91a36",
            data={"survivor_code": f"CEC-2026-{n:04d}", "opened_by": "a3f9e2c1-7b4d-4c8e-9f1a-2d6b5e0c8f47",
                  "opened_at": datetime(2026, 11, 20, 14, 5, tzinfo=timezone.utc)},
        )

    relay = outbox.Relay(engine, orm.outbox, vhost, "cases")
    try:
        with Session(engine) as session:
            outbox.stage(session, orm.outbox, envelope(0), source="cases")
            session.commit()
        assert relay.relay_once() == 1  # connected, topology declared
        with Connection(vhost) as conn:
            conn.default_channel.queue_delete("unrouted")
        first, stray, last = envelope(1), envelope(2), envelope(3)
        stray["type"] = "nobody_listens"  # no binding, and now no alternate queue either
        with Session(engine) as session:
            outbox.stage_many(session, orm.outbox, [first, stray, last], source="cases")
            session.commit()

        try:
            relay.relay_once()
        except outbox.Unroutable:
            pass
        else:
            raise AssertionError("the returned row should have been reported")

        with engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT event_id, published_at IS NOT NULL FROM outbox")).all())
            assert conn.execute(text("SELECT count(*) FROM outbox WHERE claim IS NOT NULL")).scalar() == 0
        assert rows[first["event_id"]] and rows[last["event_id"]]
        assert not rows[stray["event_id"]]

        assert relay.relay_once() == 1  # reconnected, declared: it waits in unrouted now
        with Connection(vhost) as conn:
            message = conn.default_channel.basic_get("unrouted", no_ack=True)
        assert json.loads(message.body)["event_id"] == stray["event_id"]
    finally:
        relay.close()


def test_the_relay_is_woken_by_a_commit_that_staged_events_and_by_nothing_else(backend_engines):
    import threading

    from sqlalchemy.orm import sessionmaker

    sessions = sessionmaker(backend_engines["cases"])
    wake = threading.Event()
    outbox.wake_on_commit(sessions, wake)
    envelope = build_event(
        "case_opened", organization_id="0c9a3c1e-5f0b-4f7e-8d3a-6b2e1f4c9d70",
        case_id="5e1d7c2a-9b3f-4e68-a0d4-c7f2b8e91a36",
        data={"survivor_code": "CEC-2026-0001", "opened_by": "a3f9e2c1-7b4d-4c8e-9f1a-2d6b5e0c8f47",
              "opened_at": datetime(2026, 11, 20, 14, 5, tzinfo=timezone.utc)},
    )
    with sessions() as session:
        session.execute(text("SELECT count(*) FROM outbox"))
        session.commit()  # a read: nothing to relay
        assert not wake.is_set()
        outbox.stage(session, orm.outbox, envelope, source="cases")
        session.rollback()  # the row went with the transaction
        session.commit()
        assert not wake.is_set()
        outbox.stage(session, orm.outbox, envelope, source="cases")
        assert not wake.is_set()  # not before it is durable
        session.commit()
        assert wake.is_set()
