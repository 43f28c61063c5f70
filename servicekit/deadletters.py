"""List and replay what no consumer could take: the dead letters of every
consumer of the catalogue (tried and failed, or impossible to handle), and
the events that no queue was bound to take (``unrouted``)."""
from __future__ import annotations

from dataclasses import dataclass

from amqp.exceptions import NotFound
from kombu import Connection
from nameko.events import EventHandler

from servicekit.amqp import close_quietly
from servicekit.reliable_events import (
    ATTEMPT_HEADER, ERROR_HEADER, FAILED_AT_HEADER, ORIGIN_HEADER, REASON_HEADER, ReliableEventHandler, republish,
)
from servicekit.topology import DEAD_SUFFIX, UNROUTED_QUEUE, consumer_queues, event_exchange, handler_queue_name

WARMI_HEADERS = (ATTEMPT_HEADER, ORIGIN_HEADER, ERROR_HEADER, REASON_HEADER, FAILED_AT_HEADER, "x-death")


@dataclass
class DeadLetter:
    queue: str
    message_id: str | None
    origin: str  # the handler's queue, or "<exchange> <routing key>" for an unrouted event
    attempts: int
    error: str
    reason: str
    failed_at: str


def handler_queues(service_cls) -> list[str]:
    """Queue names of the event consumers of a nameko service class."""
    names = []
    for attr in dir(service_cls):
        method = getattr(service_cls, attr)
        for entrypoint in getattr(method, "nameko_entrypoints", ()):
            if isinstance(entrypoint, ReliableEventHandler) and isinstance(entrypoint, EventHandler):
                names.append(handler_queue_name(entrypoint.source_service, entrypoint.event_type,
                                                f"{service_cls.name}.{attr}"))
    return sorted(names)


def catalogue_queues() -> list[str]:
    """Every consumer queue the catalogue names."""
    return sorted(q.name for q in consumer_queues())


def _sources(handler_queue_names: list[str] | None) -> list[str]:
    """The queues to read: each handler's dead-letter queue, and ``unrouted``
    when every consumer is asked for."""
    if handler_queue_names is None:
        return [name + DEAD_SUFFIX for name in catalogue_queues()] + [UNROUTED_QUEUE]
    return [name + DEAD_SUFFIX for name in handler_queue_names]


def _dead_letter(queue: str, message) -> DeadLetter:
    headers = message.headers or {}
    if queue == UNROUTED_QUEUE:
        info = message.raw.delivery_info
        return DeadLetter(queue=queue, message_id=message.properties.get("message_id"),
                          origin=f"{info.get('exchange')} {info.get('routing_key')}", attempts=0,
                          error="", reason="unrouted: no queue bound", failed_at="")
    return DeadLetter(
        queue=queue,
        message_id=message.properties.get("message_id"),
        origin=headers.get(ORIGIN_HEADER, queue[: -len(DEAD_SUFFIX)]),
        attempts=int(headers.get(ATTEMPT_HEADER, 0)),
        error=str(headers.get(ERROR_HEADER, "")),
        reason=str(headers.get(REASON_HEADER, "")),
        failed_at=str(headers.get(FAILED_AT_HEADER, "")),
    )


def list_dead_letters(amqp_uri: str, handler_queue_names: list[str] | None = None) -> list[DeadLetter]:
    """Read every dead letter without removing it (nothing is acked)."""
    found = []
    with Connection(amqp_uri) as conn:
        for queue in _sources(handler_queue_names):
            channel = conn.channel()
            try:
                for _ in range(_depth(channel, queue)):
                    message = channel.basic_get(queue, no_ack=False)
                    if message is None:
                        break
                    found.append(_dead_letter(queue, _KombuLike(message)))
            finally:
                close_quietly(channel)  # unacked messages go back to the queue
    return found


def replay(amqp_uri: str, handler_queue_names: list[str] | None = None, message_id: str | None = None) -> int:
    """Send dead letters back for a fresh set of tries: a handler's to its
    queue, an unrouted event to its exchange (where a binding may now take
    it, or the alternate exchange keeps it again).

    Each is acked from where it waited only after the broker confirmed the
    copy. Returns how many were replayed.
    """
    replayed = 0
    with Connection(amqp_uri) as conn:
        for queue in _sources(handler_queue_names):
            channel = conn.channel()
            try:
                for _ in range(_depth(channel, queue)):
                    raw = channel.basic_get(queue, no_ack=False)
                    if raw is None:
                        break
                    message = _KombuLike(raw)
                    if message_id and message.properties.get("message_id") != message_id:
                        continue  # left unacked: returns to the queue when the channel closes
                    headers = {k: v for k, v in (message.headers or {}).items() if k not in WARMI_HEADERS}
                    if queue == UNROUTED_QUEUE:
                        source = raw.delivery_info["exchange"].removesuffix(".events")
                        republish(amqp_uri, message, raw.delivery_info["routing_key"], headers,
                                  exchange=event_exchange(source))
                    else:
                        origin = (message.headers or {}).get(ORIGIN_HEADER, queue[: -len(DEAD_SUFFIX)])
                        republish(amqp_uri, message, origin, headers)  # returns once the broker confirmed it
                    channel.basic_ack(raw.delivery_tag)
                    replayed += 1
            finally:
                close_quietly(channel)
    return replayed


def _depth(channel, queue: str) -> int:
    """Messages waiting in ``queue``; 0 if it was never declared."""
    try:
        _, count, _ = channel.queue_declare(queue, passive=True)
    except NotFound:
        return 0
    return count


class _KombuLike:
    """The few attributes of a kombu message, read off a raw amqp message."""

    def __init__(self, raw):
        self.raw = raw
        self.body = raw.body
        self.properties = raw.properties
        self.headers = raw.properties.get("application_headers") or {}
        self.content_type = raw.properties.get("content_type")
        self.content_encoding = raw.properties.get("content_encoding")
