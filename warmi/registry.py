"""The services Warmi runs, and where each one's class lives."""
from __future__ import annotations

import importlib

SERVICES = {
    "cases": "services.cases.service:CasesService",
    "notifications": "services.notifications.service:NotificationsService",
    "referrals": "services.referrals.service:ReferralsService",
    "gateway": "services.gateway.service:GatewayService",
}
# a process may host more than one service: the gateway's hosts identity
HOSTED = {"gateway": ("services.identity.service:IdentityService",)}


def _load(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def service_class(name: str):
    return _load(SERVICES[name])


def process_classes(name: str) -> list:
    """Every service class ``warmi serve NAME`` runs in its process."""
    return [service_class(name), *(_load(path) for path in HOSTED.get(name, ()))]
