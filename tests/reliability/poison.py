"""Messages no handler can ever handle, put straight into consumer queues."""
from __future__ import annotations

import copy
import json
import uuid

from kombu import Connection

from contracts.events import CATALOGUE

# queue -> the event type its handler expects
TARGETS = {
    "evt-cases-case_opened--notifications.handle_case_opened": "case_opened",
    "evt-referrals-provider_registered--cases.handle_provider_registered": "provider_registered",
}

_INVALID_DATA = {
    "case_opened": {"survivor_code": 12345, "opened_by": "nobody", "opened_at": "yesterday"},
    "provider_registered": {"provider_id": "not-a-uuid", "kind": 7},
}


def poison_bodies(event_type: str) -> dict[str, bytes]:
    """Four kinds of poison for one handler: not JSON, schema-invalid, an
    unknown version, and an envelope without ``event_id``."""
    example = CATALOGUE[event_type].example

    def envelope(**changes) -> dict:
        body = copy.deepcopy(example)
        body["event_id"] = str(uuid.uuid4())
        body.update(changes)
        return body

    without_id = envelope()
    del without_id["event_id"]
    return {
        "not-json": b"{this is not json",
        "schema-invalid": json.dumps(envelope(data=_INVALID_DATA[event_type])).encode(),
        "unknown-version": json.dumps(envelope(version=99)).encode(),
        "no-event-id": json.dumps(without_id).encode(),
    }


def deliver_poison(amqp_uri: str) -> dict[str, str]:
    """Publish every kind of poison into every target queue, persistent, with
    publisher confirms; returns message id -> "queue kind"."""
    sent = {}
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer()
        for queue, event_type in TARGETS.items():
            for kind, body in poison_bodies(event_type).items():
                message_id = f"poison-{kind}-{uuid.uuid4().hex[:8]}"
                producer.publish(
                    body, exchange="", routing_key=queue, content_type="application/json",
                    content_encoding="utf-8", message_id=message_id, delivery_mode=2,
                )
                sent[message_id] = f"{queue} {kind}"
    return sent
