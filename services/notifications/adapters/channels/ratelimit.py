"""A channel's pace: a token bucket in front of its sender.

What holds:

- Over any stretch of ``t`` seconds at most ``burst + per_second * t``
  messages start; the first ``burst`` start at once.
- A send that finds no token takes one that is due later and sleeps until
  then, outside the lock: sends queue up in the order they asked, and no
  thread holds the lock while it waits. (``time.sleep`` under eventlet,
  which the service runs on, is a green sleep: other workers go on.)
- Only the wait is added: the receipt and the failures are the sender's.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from services.notifications.adapters.channels.base import ChannelSender, Outgoing, Receipt


class RateLimited:
    def __init__(self, sender: ChannelSender, per_second: float, burst: int, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if per_second <= 0 or burst < 1:
            raise ValueError("a channel's rate must be above 0 per second, its burst at least 1")
        self.sender = sender
        self.channel = sender.channel
        self.per_second = float(per_second)
        self.burst = burst
        self.clock, self.sleep = clock, sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = threading.Lock()

    def send(self, address: str, message: Outgoing, *, key: str) -> Receipt:
        wait = self._take()
        if wait > 0:
            self.sleep(wait)
        return self.sender.send(address, message, key=key)

    def close(self, *, polite: bool = True) -> None:
        self.sender.close(polite=polite)

    def _take(self) -> float:
        """Take a token, perhaps one not yet there: the seconds until it is."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.per_second)
            self._updated = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.per_second
