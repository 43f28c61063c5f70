"""The outbox relay on PostgreSQL: several replicas, each row published once."""
import json
from datetime import datetime, timezone

import eventlet
from kombu import Connection, Exchange, Queue
from sqlalchemy.orm import Session

from contracts.events import build_event
from servicekit import outbox
from servicekit.database import make_engine
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
    exchange = Exchange("cases.events", type="topic", durable=True)
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

    assert sum(counts) == rows
    assert all(counts), f"a replica got no work: {counts}"  # they really ran side by side
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
