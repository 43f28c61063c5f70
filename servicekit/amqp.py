"""What every consumer of Warmi does when the broker connection dies under it.

In nameko 2.14.1 an exception that escapes a worker's result handling kills
the whole container, and ``QueueConsumer.ack_message`` catches only the
builtin ``ConnectionError``, not py-amqp's. An ack or a requeue on a
connection that died is worth nothing anyway: the broker has already put the
message back and delivers it again on the new connection, where the
consumer's inbox (events) or its kept answers (RPC) make the repeat harmless.
"""
from __future__ import annotations

import logging

from amqp.exceptions import ChannelError, ConnectionError as AmqpConnectionError
from kombu.exceptions import OperationalError
from nameko.messaging import QueueConsumer

from servicekit import metrics

log = logging.getLogger(__name__)

# what a publish, an ack or a consume raises when the broker is gone or the
# connection was cut
LOST_CONNECTION = (AmqpConnectionError, ChannelError, OperationalError, OSError)


class SettlingQueueConsumer(QueueConsumer):
    """nameko's queue consumer whose ack and requeue let a dead connection go,
    logged and counted, instead of killing the container. ``kind`` names the
    consumer in the metric; each subclass is its own shared extension."""

    kind = "messages"

    def ack_message(self, message) -> bool:
        return self._settle(message, "ack")

    def requeue_message(self, message) -> bool:
        return self._settle(message, "requeue")

    def _settle(self, message, action: str) -> bool:
        """True once the broker took the ack or requeue."""
        service = self.container.service_name
        try:
            if message.channel is not None and message.channel.connection:
                getattr(message, action)()
                return True
            error = "ConnectionClosed"
        except LOST_CONNECTION as exc:
            error = type(exc).__name__
        except Exception as exc:  # never worth the container
            log.error("%s %s failed", self.kind, action, extra={"service": service, "error": type(exc).__name__})
            return False
        metrics.SETTLE_LOST.labels(service, self.kind, action).inc()
        log.warning(
            "%s %s lost with the broker connection; the broker delivers the message again", self.kind, action,
            extra={"service": service, "error": error, "message_id": message.properties.get("message_id")},
        )
        return False


def close_quietly(channel) -> None:
    """Close a channel the broker may have closed already (after a passive
    declare of a missing queue, or a refused declaration)."""
    try:
        channel.close()
    except Exception:
        pass
