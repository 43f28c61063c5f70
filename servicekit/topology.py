"""Where events go (design rule 3): nothing is routed to nowhere.

Every consumer named in the event catalogue has its durable queue, bound to
its source's exchange, and a dead-letter queue beside it, all declared before
anything is published (by every service at start-up and by ``warmi
migrate``), so an event published while its consumer has never run waits for
it. Each events exchange has an alternate exchange: an event that no binding
takes lands in the ``unrouted`` queue, where operators see it (a metric, an
alert, ``warmi dead-letters list``) instead of RabbitMQ dropping it.
"""
from __future__ import annotations

import logging

from amqp.exceptions import PreconditionFailed
from eventlet.semaphore import Semaphore
from kombu import Connection, Exchange, Queue
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import SharedExtension

from contracts.events import CATALOGUE
from servicekit.amqp import close_quietly

log = logging.getLogger(__name__)

UNROUTED_EXCHANGE = "warmi.unrouted"
UNROUTED_QUEUE = "unrouted"
DEAD_SUFFIX = ".dead"


def event_exchange(source: str) -> Exchange:
    """The topic exchange of ``source``'s events. Every declaration of it must
    carry the same arguments, or RabbitMQ refuses it."""
    return Exchange(
        f"{source}.events", type="topic", durable=True, delivery_mode=2,
        arguments={"alternate-exchange": UNROUTED_EXCHANGE},
    )


def handler_queue_name(source: str, event_type: str, consumer: str) -> str:
    """nameko's name for a service-pool handler's queue; ``consumer`` is
    ``<service>.<method>``."""
    return f"evt-{source}-{event_type}--{consumer}"


def handler_queue(source: str, event_type: str, consumer: str) -> Queue:
    return Queue(
        handler_queue_name(source, event_type, consumer), exchange=event_exchange(source),
        routing_key=event_type, durable=True,
    )


def consumer_queues() -> list[Queue]:
    """The queue of every consumer of every catalogued event."""
    return [
        handler_queue(event.source, event.name, consumer)
        for event in CATALOGUE.values()
        for consumer in event.consumers
    ]


def is_catalogued(source: str, event_type: str, consumer: str) -> bool:
    event = CATALOGUE.get(event_type)
    return event is not None and event.source == source and consumer in event.consumers


def declare(connection: Connection) -> None:
    """Declare the whole topology; safe to repeat, from any number of processes.

    An events exchange declared by an older Warmi without its alternate
    exchange is replaced (its bindings are declared again right after;
    queued messages stay in their queues)."""
    channel = connection.channel()
    try:
        unrouted = Exchange(UNROUTED_EXCHANGE, type="fanout", durable=True)
        unrouted(channel).declare()
        Queue(UNROUTED_QUEUE, exchange=unrouted, durable=True)(channel).declare()
        for source in sorted({event.source for event in CATALOGUE.values()}):
            channel = _declare_exchange(connection, channel, event_exchange(source))
        for queue in consumer_queues():
            queue.exchange.no_declare = True  # declared above, with its arguments
            queue(channel).declare()
            Queue(queue.name + DEAD_SUFFIX, durable=True)(channel).declare()
    finally:
        close_quietly(channel)


def _declare_exchange(connection: Connection, channel, exchange: Exchange):
    try:
        exchange(channel).declare()
        return channel
    except PreconditionFailed:
        # the broker closed the channel; start again on a new one
        log.warning("replacing an events exchange declared without its alternate exchange",
                    extra={"exchange": exchange.name})
        channel = connection.channel()
        channel.exchange_delete(exchange.name)
        exchange(channel).declare()
        return channel


class Topology(SharedExtension):
    """Declares the topology once per container, before the first publish or
    consume: the relay and every event handler ask for it in their setup."""

    def __init__(self) -> None:
        super().__init__()
        # made here, not in setup: a handler's setup may ask before ours ran
        self._lock = Semaphore()
        self._declared = False

    def ensure(self) -> None:
        with self._lock:
            if self._declared:
                return
            with Connection(self.container.config[AMQP_URI_CONFIG_KEY]) as conn:
                declare(conn)
            self._declared = True
