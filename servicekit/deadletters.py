"""List and replay the messages that exhausted their retries."""
from __future__ import annotations

from dataclasses import dataclass

from amqp.exceptions import NotFound
from kombu import Connection
from nameko.events import EventHandler

from servicekit.reliable_events import (
    ATTEMPT_HEADER, DEAD_SUFFIX, ERROR_HEADER, FAILED_AT_HEADER, ORIGIN_HEADER, ReliableEventHandler, republish,
)


@dataclass
class DeadLetter:
    queue: str
    message_id: str | None
    origin: str
    attempts: int
    error: str
    failed_at: str


def handler_queues(service_cls) -> list[str]:
    """Queue names of the reliable event handlers of a nameko service class."""
    names = []
    for attr in dir(service_cls):
        method = getattr(service_cls, attr)
        for entrypoint in getattr(method, "nameko_entrypoints", ()):
            if isinstance(entrypoint, ReliableEventHandler) and isinstance(entrypoint, EventHandler):
                names.append(
                    f"evt-{entrypoint.source_service}-{entrypoint.event_type}--{service_cls.name}.{attr}"
                )
    return sorted(names)


def _dead_letter(queue: str, message) -> DeadLetter:
    headers = message.headers or {}
    return DeadLetter(
        queue=queue,
        message_id=message.properties.get("message_id"),
        origin=headers.get(ORIGIN_HEADER, queue[: -len(DEAD_SUFFIX)]),
        attempts=int(headers.get(ATTEMPT_HEADER, 0)),
        error=str(headers.get(ERROR_HEADER, "")),
        failed_at=str(headers.get(FAILED_AT_HEADER, "")),
    )


def list_dead_letters(amqp_uri: str, handler_queue_names: list[str]) -> list[DeadLetter]:
    """Read every dead letter without removing it (nothing is acked)."""
    found = []
    with Connection(amqp_uri) as conn:
        for name in handler_queue_names:
            queue = name + DEAD_SUFFIX
            channel = conn.channel()
            try:
                count = _depth(channel, queue)
                for _ in range(count):
                    message = channel.basic_get(queue, no_ack=False)
                    if message is None:
                        break
                    found.append(_dead_letter(queue, _KombuLike(message)))
            finally:
                _close(channel)  # unacked messages go back to the queue
    return found


def replay(amqp_uri: str, handler_queue_names: list[str], message_id: str | None = None) -> int:
    """Send dead letters back to their handler's queue for a fresh set of tries.

    Each is acked from the dead-letter queue only after the broker confirmed
    the copy. Returns how many were replayed.
    """
    replayed = 0
    with Connection(amqp_uri) as conn:
        for name in handler_queue_names:
            queue = name + DEAD_SUFFIX
            channel = conn.channel()
            try:
                count = _depth(channel, queue)
                for _ in range(count):
                    raw = channel.basic_get(queue, no_ack=False)
                    if raw is None:
                        break
                    message = _KombuLike(raw)
                    if message_id and message.properties.get("message_id") != message_id:
                        continue  # left unacked: returns to the queue when the channel closes
                    headers = {
                        k: v
                        for k, v in (message.headers or {}).items()
                        if k not in (ATTEMPT_HEADER, ORIGIN_HEADER, ERROR_HEADER, FAILED_AT_HEADER)
                        and k != "x-death"
                    }
                    origin = (message.headers or {}).get(ORIGIN_HEADER, name)
                    republish(amqp_uri, message, origin, headers)  # returns once the broker confirmed it
                    channel.basic_ack(raw.delivery_tag)
                    replayed += 1
            finally:
                _close(channel)
    return replayed


def _depth(channel, queue: str) -> int:
    """Messages waiting in ``queue``; 0 if it was never declared (its handler
    has not run yet, so nothing can have been dead-lettered)."""
    try:
        _, count, _ = channel.queue_declare(queue, passive=True)
    except NotFound:
        return 0
    return count


def _close(channel) -> None:
    try:
        channel.close()
    except Exception:  # already closed by the broker after a passive miss
        pass


class _KombuLike:
    """The few attributes of a kombu message, read off a raw amqp message."""

    def __init__(self, raw):
        self.raw = raw
        self.body = raw.body
        self.properties = raw.properties
        self.headers = raw.properties.get("application_headers") or {}
        self.content_type = raw.properties.get("content_type")
        self.content_encoding = raw.properties.get("content_encoding")
