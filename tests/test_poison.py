"""A message no retry can fix is dead-lettered with its reason, and the
service goes on with the next good event."""
import json
import uuid

import pytest
from kombu import Connection
from prometheus_client import REGISTRY
from sqlalchemy import text

from contracts.events import CATALOGUE
from servicekit.deadletters import list_dead_letters
from servicekit.topology import handler_queue_name
from tests.conftest import wait_until

CONSUMERS = [
    # (service that consumes, event type)
    ("notifications", "case_opened"),
    ("cases", "provider_registered"),
]


def poison(event_type: str) -> list[tuple[str, bytes, str, str]]:
    """(what is wrong, body, content type, the reason it must be dead-lettered with)."""
    good = CATALOGUE[event_type].example

    def body(**changes):
        envelope = {**good, "event_id": str(uuid.uuid4()), **changes}
        return json.dumps({k: v for k, v in envelope.items() if v is not ...}).encode()

    data_field = next(iter(good["data"]))
    return [
        ("not JSON", b"{not json", "application/json", "undecodable"),
        ("a content type nameko refuses", b"\x80\x04K\x01.", "application/x-python-serialize", "undecodable"),
        ("JSON but no envelope", b'"just a string"', "application/json", "invalid: _schema"),
        ("a field of the data missing", body(data={k: v for k, v in good["data"].items() if k != data_field}),
         "application/json", f"invalid: data.{data_field}"),
        ("an unknown version", body(version=99), "application/json", "invalid: version"),
        ("no event_id", body(event_id=...), "application/json", "invalid: event_id"),
        ("another type on this routing key", body(type="case_opened_v2"), "application/json", "invalid: type"),
    ]


@pytest.mark.parametrize("service,event_type", CONSUMERS)
def test_poison_messages_are_dead_lettered_with_a_reason_while_the_next_good_event_is_handled(
        stack, clean_databases, service, event_type):
    container = stack.start(service)
    source = CATALOGUE[event_type].source
    queue = handler_queue_name(source, event_type, f"{service}.handle_{event_type}")
    bad = poison(event_type)
    good = dict(CATALOGUE[event_type].example, event_id=str(uuid.uuid4()))
    rejected_before = {
        reason: REGISTRY.get_sample_value(
            "warmi_event_rejected_total", {"service": service, "event_type": event_type, "reason": reason}) or 0
        for reason in ("undecodable", "invalid")
    }

    with Connection(stack.amqp_uri) as conn:
        producer = conn.Producer()
        for _, body, content_type, _ in bad:
            producer.publish(body, exchange="", routing_key=queue, content_type=content_type,
                             content_encoding="binary" if "python" in content_type else "utf-8",
                             message_id=str(uuid.uuid4()), delivery_mode=2)
        producer.publish(json.dumps(good).encode(), exchange="", routing_key=queue,
                         content_type="application/json", content_encoding="utf-8", delivery_mode=2)

    with clean_databases[service].connect() as conn:
        wait_until(lambda: conn.execute(text("SELECT count(*) FROM processed_events WHERE event_id = :e"),
                                        {"e": good["event_id"]}).scalar() == 1,
                   message="the good event after the poison")
    letters = wait_until(lambda: (found := list_dead_letters(stack.amqp_uri, [queue])) and len(found) == len(bad)
                         and found, message="every poison message dead-lettered")
    reasons = sorted(letter.reason for letter in letters)
    for what, _, _, reason in bad:
        assert any(r.startswith(reason) for r in reasons), (what, reasons)
    assert all(letter.origin == queue for letter in letters)
    assert not container._died.ready(), "the service stopped on a poison message"
    for reason, expected in (("undecodable", 2), ("invalid", len(bad) - 2)):
        now = REGISTRY.get_sample_value(
            "warmi_event_rejected_total", {"service": service, "event_type": event_type, "reason": reason})
        assert now - rejected_before[reason] == expected, reason
