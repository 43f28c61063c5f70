"""Fake SMS, WhatsApp and webhook providers for the tests: the local sink's
providers (``warmi.providersink``) on a free port of 127.0.0.1, in a thread
of the test, recording every request in order.

Each channel can be told what to answer next: ``program("sms", 503, 503)``
makes the next two SMS requests get 503, after which the provider answers
as usual again. A step is a status (with a JSON body holding no provider
error code), an ``Answer`` (any status and body: a provider's error code,
garbage), or ``Hang(seconds, then)``: say nothing for that long, then answer
``then`` (by default as usual).
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from http import HTTPStatus

from warmi.providersink import Answer, ProviderServer, Received


@dataclass(frozen=True)
class Hang:
    seconds: float
    then: "int | Answer | None" = None


Step = int | Answer | Hang


class FakeProviders(ProviderServer):
    def __init__(self, **checks):
        super().__init__(("127.0.0.1", 0), **checks)
        self.requests: list[Received] = []
        self.connections = 0  # TCP connections accepted: clients that reuse theirs open few
        self._programs: dict[str, deque[Step]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def process_request(self, request, client_address) -> None:
        with self._lock:
            self.connections += 1
        super().process_request(request, client_address)

    def program(self, channel: str, *steps: Step) -> None:
        with self._lock:
            self._programs[channel].extend(steps)

    def respond(self, received: Received) -> Answer:
        with self._lock:
            self.requests.append(received)
            queue = self._programs[received.channel]
            step = queue.popleft() if queue else None
        if isinstance(step, Hang):
            time.sleep(step.seconds)
            step = step.then
        if step is None:
            return super().respond(received)
        if isinstance(step, int):
            return Answer.json(step, {"status": step, "message": HTTPStatus(step).phrase})
        return step

    def of(self, channel: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.channel == channel]

    def wait_for(self, count: int, timeout: float = 10.0, channel: str | None = None) -> list[Received]:
        """The first ``count`` requests (of ``channel``) once they arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [r for r in self.requests if channel is None or r.channel == channel]
            if len(found) >= count:
                return found[:count]
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} request(s) arrived, not {count}")
            time.sleep(0.02)

    def settled(self, quiet: float = 1.0, channel: str | None = None) -> list[Received]:
        """The requests once none has arrived for ``quiet`` seconds: "exactly
        one" checked on these would see a late repeat."""
        seen = -1
        for _ in range(20):
            with self._lock:
                now = [r for r in self.requests if channel is None or r.channel == channel]
            if len(now) == seen:
                return now
            seen = len(now)
            time.sleep(quiet)
        raise AssertionError("requests kept arriving")

    def close(self) -> None:
        self.shutdown()
        self.server_close()
