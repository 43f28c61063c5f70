"""Identity: organisations, people, roles, supervisions and tokens.

It runs in the gateway's process (``warmi serve gateway`` starts both): the
gateway authenticates every request against identity's tables through
identity's own code, without a round trip over the broker. This container
publishes identity's events from its outbox and keeps the outbox short.
"""
from __future__ import annotations

from servicekit.database import Database
from servicekit.outbox import OutboxRelay
from servicekit.retention import Retention, published_outbox
from servicekit.rpc import rpc
from servicekit.telemetry import Telemetry
from servicekit.timers import configured_timer
from services.identity.adapters import orm


class IdentityService:
    name = "identity"

    db = Database()
    relay = OutboxRelay(orm.outbox)
    retention = Retention(published_outbox(orm.outbox))
    telemetry = Telemetry()

    @configured_timer("RETENTION.INTERVAL_SECONDS", 3600)
    def purge_history(self) -> None:
        """Delete published events past their retention period."""
        self.retention()

    @rpc
    def health(self) -> dict:
        return {"service": self.name, "status": "ok"}
