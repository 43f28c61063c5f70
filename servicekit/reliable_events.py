"""Event handlers that never drop a message (design rule 4).

nameko's ``event_handler`` acks a message whose handler failed
(``requeue_on_error=False``), or requeues it at once and forever. Here a failed
delivery is republished, with publisher confirms, to a wait queue whose
messages expire back into the handler's queue after a delay that grows with
each try; after the last try it goes to the handler's dead-letter queue, where
``warmi dead-letters`` lists and replays it. Only once the copy is confirmed
is the original acked; if the copy cannot be made, the original is requeued.

Raise ``PermanentFailure`` for a message that no retry can fix (a malformed
event): it goes straight to the dead-letter queue.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import eventlet
from kombu import Connection, Queue
from kombu.pools import producers
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.events import SERVICE_POOL, EventHandler

from servicekit import metrics

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-warmi-attempt"
ORIGIN_HEADER = "x-warmi-origin-queue"
ERROR_HEADER = "x-warmi-error"
FAILED_AT_HEADER = "x-warmi-failed-at"
DEAD_SUFFIX = ".dead"
PUBLISH_TIMEOUT = 5.0


class PermanentFailure(Exception):
    """The message can never be handled; retrying is pointless."""


@dataclass(frozen=True)
class RetryPolicy:
    delays: tuple[float, ...]  # seconds before try 2, 3, ...

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1

    @classmethod
    def from_config(cls, config: dict) -> "RetryPolicy":
        settings = config.get("EVENT_RETRY") or {}
        delays = settings.get("DELAYS") or [2, 10, 60, 300, 900]
        return cls(tuple(float(d) for d in delays))


def dead_letter_queue(queue_name: str) -> Queue:
    return Queue(queue_name + DEAD_SUFFIX, durable=True, no_declare=False)


def wait_queue(queue_name: str, delay: float) -> Queue:
    millis = max(1, int(delay * 1000))
    return Queue(
        f"{queue_name}.wait.{millis}ms",
        durable=True,
        queue_arguments={
            "x-message-ttl": millis,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue_name,
        },
    )


def declare_retry_topology(connection: Connection, queue_name: str, policy: RetryPolicy) -> None:
    channel = connection.default_channel
    for delay in policy.delays:
        wait_queue(queue_name, delay)(channel).declare()
    dead_letter_queue(queue_name)(channel).declare()


class ReliableEventHandler(EventHandler):
    """``event_handler`` with bounded retries, backoff and a dead-letter queue."""

    def __init__(self, source_service: str, event_type: str, **kwargs):
        kwargs.setdefault("handler_type", SERVICE_POOL)
        super().__init__(source_service, event_type, reliable_delivery=True, requeue_on_error=True, **kwargs)

    def setup(self) -> None:
        super().setup()
        self.policy = RetryPolicy.from_config(self.container.config)
        self.amqp_uri = self.container.config[AMQP_URI_CONFIG_KEY]
        with Connection(self.amqp_uri) as conn:
            # the handler's own queue too, so that nothing published before the
            # first start of this service is unroutable
            self.queue(conn.default_channel).declare()
            declare_retry_topology(conn, self.queue.name, self.policy)

    def handle_message_processed(self, message, result=None, exc_info=None) -> None:
        if exc_info is None:
            self.queue_consumer.ack_message(message)
            return
        headers = dict(message.headers or {})
        attempt = int(headers.get(ATTEMPT_HEADER, 1))
        permanent = isinstance(exc_info[1], PermanentFailure)
        service = self.container.service_name
        if permanent or attempt >= self.policy.max_attempts:
            target = dead_letter_queue(self.queue.name).name
            headers.update(
                {
                    ORIGIN_HEADER: self.queue.name,
                    ERROR_HEADER: exc_info[0].__name__,
                    FAILED_AT_HEADER: datetime.now(timezone.utc).isoformat(),
                    ATTEMPT_HEADER: attempt,
                }
            )
            metric = metrics.EVENT_DEAD_LETTERED
        else:
            target = wait_queue(self.queue.name, self.policy.delays[attempt - 1]).name
            headers[ATTEMPT_HEADER] = attempt + 1
            metric = metrics.EVENT_RETRIES
        try:
            republish(self.amqp_uri, message, target, headers)
        except Exception as exc:
            # Could not park the copy: give the original back to the broker
            # rather than lose it, after a pause so a dead broker is not spun on.
            log.error(
                "could not reschedule a failed event; requeueing it",
                extra={"event_type": self.event_type, "error": type(exc).__name__},
            )
            eventlet.sleep(1.0)
            self.queue_consumer.requeue_message(message)
            return
        metric.labels(service, self.event_type).inc()
        log.warning(
            "event handling failed; %s",
            "dead-lettered" if metric is metrics.EVENT_DEAD_LETTERED else "will retry",
            extra={
                "event_type": self.event_type,
                "attempt": attempt,
                "error": exc_info[0].__name__,
                "message_id": message.properties.get("message_id"),
            },
        )
        self.queue_consumer.ack_message(message)


def republish(amqp_uri: str, message, routing_key: str, headers: dict) -> None:
    """Publish a copy of ``message`` to a queue through the default exchange,
    and return only once the broker has confirmed it."""
    conn = Connection(amqp_uri, transport_options={"confirm_publish": True})
    with producers[conn].acquire(block=True, timeout=PUBLISH_TIMEOUT) as producer:
        producer.publish(
            message.body,
            exchange="",
            routing_key=routing_key,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers=headers,
            message_id=message.properties.get("message_id"),
            delivery_mode=2,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            timeout=PUBLISH_TIMEOUT,
            confirm_timeout=PUBLISH_TIMEOUT,
        )


reliable_event_handler = ReliableEventHandler.decorator
