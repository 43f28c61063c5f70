"""Routing that cannot drop: every consumer's queue exists before anything is
published, and an event nobody is bound to take waits in ``unrouted``."""
import json
import uuid

import pytest
from kombu import Connection
from nameko.containers import ServiceContainer
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.orm import Session

from contracts.events import CATALOGUE
from servicekit import outbox
from servicekit.deadletters import list_dead_letters, replay
from servicekit.reliable_events import event_consumer
from servicekit.topology import UNROUTED_QUEUE, handler_queue_name
from services.cases.adapters import orm
from tests.conftest import wait_until
from tests.support.notify import nobody_excluded


def fresh(name: str) -> dict:
    """The catalogue's example of ``name``, with an id of its own."""
    return dict(CATALOGUE[name].example, event_id=str(uuid.uuid4()))


def drain(amqp_uri: str, queue: str) -> list[dict]:
    bodies = []
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            bodies.append(json.loads(message.body))
        channel.close()
    return bodies


def relay_everything(engine, amqp_uri: str) -> None:
    relay = outbox.Relay(engine, orm.outbox, amqp_uri, "cases")
    try:
        while relay.relay_once():
            pass
    finally:
        relay.close()


def test_every_catalogued_event_published_before_its_consumer_ever_ran_waits_for_it(
        stack, clean_databases, monkeypatch):
    nobody_excluded(monkeypatch)  # the events' cases are made up: cases never opened them
    engine = clean_databases["cases"]
    events = {name: fresh(name) for name in CATALOGUE}
    with Session(engine) as session:
        for name, event in events.items():
            outbox.stage(session, orm.outbox, event, source=CATALOGUE[name].source)
        session.commit()

    # nothing of Warmi has run on this broker yet: the relay declares the
    # catalogue's queues before its first publish
    relay_everything(engine, stack.amqp_uri)

    # the consumers that exist handle theirs when they start, much later
    stack.start("cases")
    stack.start("notifications")
    from warmi.registry import service_class

    handled = {consumer for event_type in CATALOGUE.values() for consumer in event_type.consumers
               if hasattr(service_class(consumer.split(".")[0]), consumer.split(".")[1])}
    assert {"notifications.handle_case_opened", "notifications.handle_case_lead_assigned",
            "cases.handle_provider_registered", "notifications.handle_member_added",
            "cases.handle_organization_registered"} <= handled
    for name, event_type in CATALOGUE.items():
        for consumer in set(event_type.consumers) & handled:
            service = consumer.split(".")[0]
            with clean_databases[service].connect() as conn:
                wait_until(lambda: conn.execute(text(
                    "SELECT count(*) FROM processed_events WHERE event_id = :e"), {"e": events[name]["event_id"]}
                ).scalar() >= 1, message=f"{consumer} to handle {name}")
    stack.stop_all()

    # every other consumer the catalogue names finds each of its events waiting
    waiting = set()
    for name, event_type in CATALOGUE.items():
        assert event_type.consumers, f"{name} has no consumer: it would be routed to nowhere"
        for consumer in set(event_type.consumers) - handled:
            bodies = drain(stack.amqp_uri, handler_queue_name(event_type.source, name, consumer))
            assert [b["event_id"] for b in bodies] == [events[name]["event_id"]], (name, consumer)
            waiting.add(consumer)
    # the referral lifecycle has no handler yet
    assert {"referrals.handle_consent_recorded", "referrals.handle_consent_withdrawn",
            "referrals.handle_case_closed"} <= waiting
    assert drain(stack.amqp_uri, UNROUTED_QUEUE) == []


def test_an_event_no_queue_is_bound_to_lands_in_unrouted_and_is_counted(stack, clean_databases):
    stack.start("cases")
    stray = dict(fresh("case_updated"), type="case_archived")  # a kind no consumer is bound to
    with Session(clean_databases["cases"]) as session:
        outbox.stage(session, orm.outbox, stray, source="cases")
        session.commit()

    def unrouted():
        return REGISTRY.get_sample_value("warmi_events_unrouted_messages", {"service": "cases"})

    wait_until(lambda: unrouted() == 1, message="the unrouted gauge")
    with clean_databases["cases"].connect() as conn:
        assert conn.execute(text("SELECT published_at FROM outbox")).scalar() is not None

    letters = [letter for letter in list_dead_letters(stack.amqp_uri) if letter.queue == UNROUTED_QUEUE]
    assert [(letter.message_id, letter.origin) for letter in letters] == [(stray["event_id"], "cases.events case_archived")]
    assert letters[0].reason.startswith("unrouted")

    # replayed while still nobody is bound: it comes back to unrouted, not lost
    assert replay(stack.amqp_uri, message_id=stray["event_id"]) == 1
    wait_until(lambda: [m["event_id"] for m in drain(stack.amqp_uri, UNROUTED_QUEUE)] == [stray["event_id"]],
               message="the replayed event back in unrouted")


def test_a_consumer_the_catalogue_does_not_name_refuses_to_start(vhost):
    class Archive:
        name = "archive"

        @event_consumer("cases", "case_opened")
        def handle_case_opened(self, event):
            pass

    container = ServiceContainer(Archive, {"AMQP_URI": vhost})
    with pytest.raises(ValueError, match="archive.handle_case_opened"):
        container.start()
    container.kill()
