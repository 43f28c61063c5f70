"""The channels a notification goes out on, each behind the port of ``base``
(``docs/channels.md`` says how to configure and try each).

``senders_from_config`` builds them from the service's configuration: e-mail
always; SMS when ``SMS_URL`` is set; WhatsApp when ``WHATSAPP_URL`` is set;
webhooks always (each organisation gives its own URL). Each sender is
wrapped in its channel's pace, ``CHANNEL_RATE_PER_SECOND[channel]`` messages
a second with a burst of one second's worth. The HTTP channels keep one
session each (connections reused, up to ``pool_size`` per host) and wait
``HTTP_TIMEOUT_SECONDS`` (connect, read).
"""
from __future__ import annotations

import math

from services.notifications.adapters.channels import http
from services.notifications.adapters.channels.base import ChannelSender
from services.notifications.adapters.channels.email import EmailSender
from services.notifications.adapters.channels.ratelimit import RateLimited
from services.notifications.adapters.channels.sms import SmsSender
from services.notifications.adapters.channels.webhook import WebhookSender
from services.notifications.adapters.channels.whatsapp import WhatsAppSender

DEFAULT_RATES = {"email": 1000.0, "sms": 10.0, "whatsapp": 20.0, "webhook": 100.0}


def _text(config: dict, key: str, default: str = "") -> str:
    """A setting as text: YAML may have read a number, or nothing."""
    value = config.get(key)
    return default if value is None or value == "" else str(value)


def _timeout(config: dict) -> tuple[float, float]:
    given = config.get("HTTP_TIMEOUT_SECONDS") or {}
    connect, read = http.TIMEOUT
    return float(given.get("connect") or connect), float(given.get("read") or read)


def senders_from_config(config: dict, *, pool_size: int) -> dict[str, ChannelSender]:
    """Every configured channel's sender, by channel name, rate-limited."""
    timeout = _timeout(config)
    senders: dict[str, ChannelSender] = {
        "email": EmailSender(
            _text(config, "SMTP_URL", "smtp://127.0.0.1:8025"), _text(config, "MAIL_FROM", "warmi@localhost"),
            pool_size=pool_size,
        ),
        "webhook": WebhookSender(_text(config, "WEBHOOK_SECRET"), timeout=timeout, pool_size=pool_size),
    }
    if _text(config, "SMS_URL"):
        senders["sms"] = SmsSender(
            _text(config, "SMS_URL"), _text(config, "SMS_ACCOUNT_SID"), _text(config, "SMS_AUTH_TOKEN"),
            sender=_text(config, "SMS_FROM") or None,
            messaging_service_sid=_text(config, "SMS_MESSAGING_SERVICE_SID") or None,
            status_callback=_text(config, "SMS_STATUS_CALLBACK") or None,
            timeout=timeout, pool_size=pool_size,
        )
    if _text(config, "WHATSAPP_URL"):
        senders["whatsapp"] = WhatsAppSender(
            _text(config, "WHATSAPP_URL"), _text(config, "WHATSAPP_PHONE_NUMBER_ID"), _text(config, "WHATSAPP_TOKEN"),
            timeout=timeout, pool_size=pool_size,
        )
    rates = {**DEFAULT_RATES, **{k: float(v) for k, v in (config.get("CHANNEL_RATE_PER_SECOND") or {}).items() if v}}
    return {
        channel: RateLimited(sender, rates[channel], max(1, math.ceil(rates[channel])))
        for channel, sender in senders.items()
    }
