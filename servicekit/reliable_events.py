"""The consumer kit: event handlers that never drop a message and never stop
on a bad one (design rule 4).

Every event handler of Warmi is an ``event_consumer``. Before a worker runs,
the message is loaded through the catalogue (``contracts.events``); the
handler method receives the loaded envelope. Then:

- **A message that can never be handled** (not JSON, not an envelope, fails
  its schema, unknown type or version, no ``event_id``) goes straight to the
  handler's dead-letter queue with the reason (field names, never values) in
  its headers; the service goes on with the next message. nameko would
  otherwise stop the whole container on a message it cannot decode.
- **A handler that fails** has its message republished, with publisher
  confirms, to a wait queue whose messages expire back into the handler's
  queue after a delay that grows with each try; after the last try it goes
  to the dead-letter queue, where ``warmi dead-letters`` lists and replays
  it. Only once the copy is confirmed is the original acked; if the copy
  cannot be made, the original is requeued.
- **An ack that the broker can no longer take** (its connection died during
  the work) is let go: the broker redelivers the message on the new
  connection and the handler's inbox turns the repeat into a no-op.

The handler's side of the bargain, the same in every service: record the
``event_id`` in the same transaction as the effect it guards
(``servicekit.inbox.claim``) and commit before returning; for an effect
outside the database (sending an e-mail) plan the effect in a row, claim it,
perform it, mark it done, and record the ``event_id`` once nothing is left
(see ``services/notifications/service_layer/handlers.py``). The database
provider never commits behind the handler's back: what a worker left
uncommitted is rolled back.

Raise ``PermanentFailure`` for a message that no retry can fix.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial

import eventlet
from kombu import Connection, Queue
from kombu.pools import producers
from marshmallow import ValidationError
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.events import SERVICE_POOL, EventHandler

from contracts.events import load_event
from servicekit import metrics
from servicekit.amqp import SettlingQueueConsumer
from servicekit.topology import DEAD_SUFFIX, Topology, handler_queue, is_catalogued

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-warmi-attempt"
ORIGIN_HEADER = "x-warmi-origin-queue"
ERROR_HEADER = "x-warmi-error"
REASON_HEADER = "x-warmi-reason"
FAILED_AT_HEADER = "x-warmi-failed-at"
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


def declare_wait_queues(connection: Connection, queue_name: str, policy: RetryPolicy) -> None:
    """The wait queues of this service's retry delays (the handler's queue and
    its dead-letter queue come with the topology)."""
    channel = connection.default_channel
    for delay in policy.delays:
        wait_queue(queue_name, delay)(channel).declare()


class EventQueueConsumer(SettlingQueueConsumer):
    """nameko's queue consumer for event handlers, with two changes: a message
    that cannot be decoded is handed to its handler's ``reject`` instead of
    stopping the container, and an ack or requeue on a connection that died
    is let go (the broker has already put the message back)."""

    kind = "event"

    def get_consumers(self, consumer_cls, channel):
        for provider in self._providers:
            consumer = consumer_cls(
                queues=[provider.queue],
                callbacks=[partial(self.handle_message, provider)],
                accept=self.accept,
                on_decode_error=partial(self._undecodable, provider),
            )
            consumer.qos(prefetch_count=self.prefetch_count)
            self._consumers[provider] = consumer
        return self._consumers.values()

    def _undecodable(self, provider, message, exc) -> None:
        # runs in the consumer's own thread: hand the work to a managed one
        self.container.spawn_managed_thread(
            partial(provider.reject, message, "undecodable", type(exc).__name__), identifier="reject-undecodable"
        )


class ReliableEventHandler(EventHandler):
    """``event_handler`` that loads the event through the catalogue, retries
    with backoff, and dead-letters what cannot or could not be handled."""

    queue_consumer = EventQueueConsumer()
    topology = Topology()

    def __init__(self, source_service: str, event_type: str, **kwargs):
        kwargs.setdefault("handler_type", SERVICE_POOL)
        super().__init__(source_service, event_type, reliable_delivery=True, requeue_on_error=True, **kwargs)

    def setup(self) -> None:
        super().setup()
        consumer = f"{self.container.service_name}.{self.method_name}"
        if not is_catalogued(self.source_service, self.event_type, consumer):
            # its queue would not exist before the first event is published
            raise ValueError(f"{consumer} consumes {self.source_service}.{self.event_type}, "
                             "which the event catalogue (contracts/events.py) does not say")
        # the catalogue's queue, on the exchange with its alternate exchange
        self.queue = handler_queue(self.source_service, self.event_type, consumer)
        self.queue.exchange.no_declare = True
        self.policy = RetryPolicy.from_config(self.container.config)
        self.amqp_uri = self.container.config[AMQP_URI_CONFIG_KEY]
        self.topology.ensure()
        with Connection(self.amqp_uri) as conn:
            declare_wait_queues(conn, self.queue.name, self.policy)

    def handle_message(self, body, message) -> None:
        try:
            event = load_event(body, self.event_type)
        except ValidationError as err:
            self.reject(message, "invalid", _field_paths(err.messages))
            return
        super().handle_message(event, message)

    def reject(self, message, reason: str, detail: str) -> None:
        """Dead-letter a message that no retry can fix, with why."""
        headers = dict(message.headers or {})
        headers.update({REASON_HEADER: f"{reason}: {detail}"[:200], ERROR_HEADER: "PermanentFailure"})
        metrics.EVENT_REJECTED.labels(self.container.service_name, self.event_type, reason).inc()
        self._park(message, headers, dead=True, attempt=int(headers.get(ATTEMPT_HEADER, 1)), error="PermanentFailure")

    def handle_message_processed(self, message, result=None, exc_info=None) -> None:
        if exc_info is None:
            self.queue_consumer.ack_message(message)
            return
        headers = dict(message.headers or {})
        attempt = int(headers.get(ATTEMPT_HEADER, 1))
        error = exc_info[0].__name__
        if isinstance(exc_info[1], PermanentFailure):
            headers[REASON_HEADER] = f"permanent: {exc_info[1]}"[:200]
            self._park(message, headers, dead=True, attempt=attempt, error=error)
        elif attempt >= self.policy.max_attempts:
            headers[REASON_HEADER] = f"failed {attempt} times"
            self._park(message, headers, dead=True, attempt=attempt, error=error)
        else:
            self._park(message, headers, dead=False, attempt=attempt, error=error)

    def _park(self, message, headers: dict, *, dead: bool, attempt: int, error: str) -> None:
        """Move ``message`` to the dead-letter queue or the next wait queue,
        acking the original only once the broker confirmed the copy."""
        service = self.container.service_name
        if dead:
            target = self.queue.name + DEAD_SUFFIX
            headers.update({
                ORIGIN_HEADER: self.queue.name, ERROR_HEADER: error,
                FAILED_AT_HEADER: datetime.now(timezone.utc).isoformat(), ATTEMPT_HEADER: attempt,
            })
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
            "event handling failed; %s", "dead-lettered" if dead else "will retry",
            extra={
                "event_type": self.event_type, "attempt": attempt, "error": error,
                "reason": headers.get(REASON_HEADER), "message_id": message.properties.get("message_id"),
            },
        )
        self.queue_consumer.ack_message(message)


def _field_paths(messages, prefix: str = "") -> str:
    """``{"data": {"opened_at": [...]}}`` -> ``data.opened_at``: where the
    message is wrong, never what it holds."""
    if not isinstance(messages, dict):
        return prefix or "_schema"
    paths = [_field_paths(value, f"{prefix}.{key}" if prefix else str(key)) for key, value in messages.items()]
    return ", ".join(sorted(paths))


def republish(amqp_uri: str, message, routing_key: str, headers: dict, exchange="") -> None:
    """Publish a copy of ``message`` (to a queue through the default exchange,
    unless told otherwise), and return only once the broker has confirmed it."""
    conn = Connection(amqp_uri, transport_options={"confirm_publish": True})
    with producers[conn].acquire(block=True, timeout=PUBLISH_TIMEOUT) as producer:
        producer.publish(
            message.body,
            exchange=exchange,
            routing_key=routing_key,
            declare=[],
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


event_consumer = ReliableEventHandler.decorator
