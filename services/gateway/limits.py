"""A rate limit per bearer token (per address for requests without a valid
one): a token bucket in each gateway process.

``RATE_LIMIT_PER_MINUTE`` requests a minute, with bursts up to that many;
unset or 0 turns the limit off. Each gateway process keeps its own buckets,
so with N processes behind a balancer a token gets up to N times the limit.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict

from nameko.extensions import DependencyProvider

MAX_BUCKETS = 10_000  # the least recently used are forgotten (a full bucket is the same as none)


class TokenBuckets:
    def __init__(self, per_minute: float, clock=time.monotonic):
        self.capacity = float(per_minute)
        self.rate = self.capacity / 60.0
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def take(self, key: str) -> int:
        """0 if a request of ``key`` may go ahead (and counts it), otherwise
        the whole seconds until it may."""
        if not self.enabled:
            return 0
        now = self.clock()
        tokens, at = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0
        else:
            self._buckets[key] = (tokens, now)
            wait = max(1, math.ceil((1.0 - tokens) / self.rate))
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return wait


def token_key(authorization: str) -> str:
    """A bucket's name for a token: its digest, never the token itself."""
    return "token:" + hashlib.sha256(authorization.encode("utf-8", "surrogateescape")).hexdigest()


def address_key(address: str | None) -> str:
    return "address:" + (address or "unknown")


class RateLimit(DependencyProvider):
    """The buckets of this gateway process, from ``RATE_LIMIT_PER_MINUTE``."""

    def setup(self) -> None:
        value = self.container.config.get("RATE_LIMIT_PER_MINUTE") or 0
        per_minute = float(value)
        if per_minute < 0 or math.isnan(per_minute):
            raise ValueError("RATE_LIMIT_PER_MINUTE must be 0 (no limit) or more")
        self.buckets = TokenBuckets(per_minute)

    def get_dependency(self, worker_ctx) -> TokenBuckets:
        return self.buckets
