"""The referrals service. For now it answers health checks; the provider
directory and consent-gated referrals come next."""
from __future__ import annotations

from nameko.rpc import rpc

from servicekit.telemetry import Telemetry


class ReferralsService:
    name = "referrals"

    telemetry = Telemetry()

    @rpc
    def health(self) -> dict:
        return {"service": self.name, "status": "ok"}
