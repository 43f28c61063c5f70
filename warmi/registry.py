"""The services Warmi runs, and where each one's class lives."""
from __future__ import annotations

import importlib

SERVICES = {
    "cases": "services.cases.service:CasesService",
    "notifications": "services.notifications.service:NotificationsService",
    "referrals": "services.referrals.service:ReferralsService",
    "gateway": "services.gateway.service:GatewayService",
}


def service_class(name: str):
    module, _, attr = SERVICES[name].partition(":")
    return getattr(importlib.import_module(module), attr)
