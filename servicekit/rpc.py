"""nameko's RPC, made to ride out a broker restart or a cut connection.

In nameko 2.14.1 an exception that escapes a worker's result handling or a
managed thread kills the whole container. Three places raise exactly that when
the broker goes away under a call: the reply publish (a short retry, then the
connection error), the ack of the request (``QueueConsumer.ack_message``
catches only the builtin ``ConnectionError``, not py-amqp's), and the client's
ack of a reply. Here:

- the reply is published with patience (``RPC_REPLY_PATIENCE`` seconds of
  tries across reconnects); if it still cannot go, it is counted and logged,
  and the container lives on;
- an ack or requeue on a dead connection is let go, logged and counted
  (``servicekit.amqp``): the broker has already put the request back, and it
  is delivered again;
- a request delivered again whose answer this process already computed (the
  ack or the reply was lost) is answered with that answer, not run a second
  time. If the first run is still going, the second delivery waits for it.

The answers kept for that are held in memory for a short time only
(``KEPT_SECONDS``), never written anywhere.
"""
from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict

import eventlet
import kombu.serialization
from eventlet.event import Event
from nameko import rpc as nameko_rpc
from nameko.amqp.publish import Publisher
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY, AMQP_URI_CONFIG_KEY, LOGIN_METHOD_CONFIG_KEY,
)
from nameko.exceptions import UnserializableValueError, serialize

from servicekit.amqp import LOST_CONNECTION, SettlingQueueConsumer
from servicekit.metrics import RPC_REPLIES_LOST, RPC_REPLIES_REPEATED

log = logging.getLogger(__name__)

DEFAULT_REPLY_PATIENCE = 20.0
KEPT_SECONDS = 120.0
KEPT_MAX = 1000
FORGET_UNANSWERED_SECONDS = 600.0

class _PatientConnection:
    """Connection options for one try: fail fast, the caller loops."""

    transport_options = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}
    retry_policy = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}


class _ReplyPublisher(_PatientConnection, Publisher):
    transport_options = dict(_PatientConnection.transport_options)


class _RequestPublisher(_PatientConnection, Publisher):
    # one retry covers a pooled connection the broker closed while idle; more
    # would only keep an HTTP client waiting for an answer it gets as a 503
    transport_options = dict(_PatientConnection.transport_options)


class RpcQueueConsumer(SettlingQueueConsumer):
    """nameko's queue consumer for RPC requests and replies, whose ack and
    requeue survive a dead connection."""

    kind = "rpc"


class ReliableRpcConsumer(nameko_rpc.RpcConsumer):
    queue_consumer = RpcQueueConsumer()

    def __init__(self):
        super().__init__()
        self._running: dict[tuple, Event] = {}
        self._kept: OrderedDict[tuple, tuple[float, dict, str]] = OrderedDict()

    # -- requests ----------------------------------------------------------------
    def handle_message(self, body, message):
        # the same call id again: the broker's redelivery after a lost ack, or
        # the client's publish retried after a lost confirm
        key = _request_key(message)
        if key is not None:
            running = self._running.get(key)
            answer = running.wait() if running is not None else self._take_kept(key)
            if answer is not None:
                self._answer_again(message, key, *answer)
                return
            self._running[key] = Event()
        super().handle_message(body, message)

    def handle_result(self, message, result, exc_info):
        key = _request_key(message)
        answer = None
        try:
            payload, serializer, result, exc_info = _reply_payload(message, result, exc_info)
            answer = (payload, serializer)
            sent = self._publish_reply(message, payload, serializer)
            acked = self.queue_consumer.ack_message(message)
            if key is not None and not (sent and acked):
                self._keep(key, payload, serializer)
        except Exception as exc:  # never worth the container
            log.error("RPC reply failed", extra={"service": self.container.service_name, "error": type(exc).__name__})
        finally:
            running = self._running.pop(key, None) if key is not None else None
            if running is not None:
                running.send(answer)  # None: the delivery waiting on it runs itself
        return result, exc_info

    def _answer_again(self, message, key, payload: dict, serializer: str) -> None:
        try:
            RPC_REPLIES_REPEATED.labels(self.container.service_name).inc()
            sent = self._publish_reply(message, payload, serializer)
            if not (self.queue_consumer.ack_message(message) and sent):
                self._keep(key, payload, serializer)
        except Exception as exc:  # never worth the container
            log.error("repeating an RPC answer failed", extra={"error": type(exc).__name__})

    # -- replies -----------------------------------------------------------------
    def _publish_reply(self, message, payload: dict, serializer: str) -> bool:
        config = self.container.config
        service = self.container.service_name
        publisher = _ReplyPublisher(
            config[AMQP_URI_CONFIG_KEY], ssl=config.get(AMQP_SSL_CONFIG_KEY),
            login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
        )
        patience = float(config.get("RPC_REPLY_PATIENCE", DEFAULT_REPLY_PATIENCE))
        deadline = time.monotonic() + patience
        delay = 0.1
        while True:
            try:
                publisher.publish(
                    payload, serializer=serializer, exchange=nameko_rpc.get_rpc_exchange(config),
                    routing_key=message.properties["reply_to"],
                    correlation_id=message.properties.get("correlation_id"),
                )
                return True
            except LOST_CONNECTION as exc:
                if time.monotonic() + delay > deadline:
                    error = type(exc).__name__
                    break
                eventlet.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception as exc:  # never worth the container
                error = type(exc).__name__
                break
        RPC_REPLIES_LOST.labels(service).inc()
        log.warning("RPC reply could not be published; the caller times out", extra={"service": service, "error": error})
        return False

    # -- answers kept for a delivery that comes again ---------------------------
    def _keep(self, key: tuple, payload: dict, serializer: str) -> None:
        now = time.monotonic()
        self._kept[key] = (now + KEPT_SECONDS, payload, serializer)
        while self._kept:
            oldest_key, (expires, _, _) = next(iter(self._kept.items()))
            if expires > now and len(self._kept) <= KEPT_MAX:
                break
            del self._kept[oldest_key]

    def _take_kept(self, key: tuple):
        kept = self._kept.pop(key, None)
        if kept is None or kept[0] < time.monotonic():
            return None
        return kept[1], kept[2]


def _request_key(message) -> tuple | None:
    correlation_id = message.properties.get("correlation_id")
    reply_to = message.properties.get("reply_to")
    return (reply_to, correlation_id) if correlation_id and reply_to else None


def _reply_payload(message, result, exc_info):
    """The reply body, encoded as the request was, as nameko's Responder makes it."""
    error = serialize(exc_info[1]) if exc_info is not None else None
    serializer = kombu.serialization.registry.type_to_name[message.properties["content_type"]]
    try:
        kombu.serialization.dumps(result, serializer)
    except Exception:
        exc_info = sys.exc_info()
        error = serialize(UnserializableValueError(result))
        result = None
    return {"result": result, "error": error}, serializer, result, exc_info


class Rpc(nameko_rpc.Rpc):
    rpc_consumer = ReliableRpcConsumer()


rpc = Rpc.decorator


# -- the client side (the gateway) ---------------------------------------------

class ReplyListener(nameko_rpc.ReplyListener):
    queue_consumer = RpcQueueConsumer()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._asked_at: OrderedDict[str, float] = OrderedDict()

    def get_reply_event(self, correlation_id):
        # nameko keeps the event of a call whose caller gave up (a timeout)
        # forever; while a service is down that is every call
        now = time.monotonic()
        while self._asked_at:
            oldest, asked_at = next(iter(self._asked_at.items()))
            if now - asked_at < FORGET_UNANSWERED_SECONDS:
                break
            del self._asked_at[oldest]
            self._reply_events.pop(oldest, None)
        self._asked_at[correlation_id] = now
        return super().get_reply_event(correlation_id)


class MethodProxy(nameko_rpc.MethodProxy):
    publisher_cls = _RequestPublisher


class ServiceProxy(nameko_rpc.ServiceProxy):
    def __getattr__(self, name):
        return MethodProxy(self.worker_ctx, self.service_name, name, self.reply_listener, **self.options)


class RpcProxy(nameko_rpc.RpcProxy):
    """``RpcProxy`` whose reply listener survives a dead connection and whose
    request publish gives up quickly when the broker is away, so the caller
    can answer "try again" instead of hanging."""

    rpc_reply_listener = ReplyListener()

    def get_dependency(self, worker_ctx):
        return ServiceProxy(worker_ctx, self.target_service, self.rpc_reply_listener, **self.options)
