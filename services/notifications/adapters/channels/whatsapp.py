"""WhatsApp through the WhatsApp Business Cloud API.

``POST {WHATSAPP_URL}/{WHATSAPP_PHONE_NUMBER_ID}/messages`` with
``Authorization: Bearer {WHATSAPP_TOKEN}`` and the JSON body::

    {"messaging_product": "whatsapp", "to": "51987654321", "type": "template",
     "template": {"name": "warmi_case_opened", "language": {"code": "es"},
                  "components": [{"type": "body",
                                  "parameters": [{"type": "text", "text": "CEC-2026-0001"}, ...]}]}}

With Meta, ``WHATSAPP_URL`` is ``https://graph.facebook.com/v21.0``.

What holds:

- **Only template messages are sent.** A business may write free text to a
  person only within 24 hours of that person's last message; outside that
  window only a template approved by Meta may start a conversation. Warmi
  never sends free text, so it never breaks the 24-hour rule, whenever the
  person last wrote. An ``Outgoing`` without a template (or its language) is
  ``PermanentRejection("no-template")``.
- ``to`` is the E.164 number's digits without the ``+``; a number that is not
  E.164 is ``PermanentRejection("bad-address")`` and Meta is not asked.
- 200 with ``{"messages": [{"id": ...}]}``: ``Receipt("200", id)``; a 2xx
  without an id: ``TransientFailure("bad-answer")``. Failures as in
  ``channels.http``, the code being Meta's (``{"error": {"code": 131026}}``:
  ``"131026"``). Meta answers some throttling with 400: its rate-limit codes
  (``THROTTLED``) are transient like a 429.
- The Cloud API takes no idempotency key: a repeat of a delivery whose
  answer was lost (a read timeout) can reach the person twice. The
  receipt's id is what ties a message to its delivery.
"""
from __future__ import annotations

from services.notifications.adapters.channels import http
from services.notifications.adapters.channels.base import Outgoing, PermanentRejection, Receipt, TransientFailure
from services.notifications.adapters.channels.sms import e164

# 4: the app's call rate; 80007: the business account's; 130429: throughput;
# 131048: spam rate; 131056: too many messages to one number
THROTTLED = frozenset({"4", "80007", "130429", "131048", "131056"})


def template_body(to: str, message: Outgoing) -> dict:
    """The Cloud API's JSON for ``message`` sent to the E.164 number ``to``."""
    template: dict = {"name": message.template, "language": {"code": message.language}}
    if message.parameters:
        template["components"] = [
            {"type": "body", "parameters": [{"type": "text", "text": p} for p in message.parameters]}
        ]
    return {"messaging_product": "whatsapp", "to": to.lstrip("+"), "type": "template", "template": template}


class WhatsAppSender:
    channel = "whatsapp"

    def __init__(self, url: str, phone_number_id: str, token: str, *,
                 timeout: tuple[float, float] = http.TIMEOUT, pool_size: int = 10):
        if not (phone_number_id and token):
            raise ValueError("WhatsApp needs WHATSAPP_PHONE_NUMBER_ID and WHATSAPP_TOKEN")
        self.url = f"{url.rstrip('/')}/{phone_number_id}/messages"
        self.timeout = timeout
        self.session = http.new_session(pool_size)
        self.session.headers["Authorization"] = f"Bearer {token}"

    def send(self, address: str, message: Outgoing, *, key: str) -> Receipt:
        """One template message to ``address``."""
        if not (message.template and message.language):
            raise PermanentRejection("no-template")
        if not e164(address):
            raise PermanentRejection("bad-address")
        status, body = http.post(self.session, self.url, timeout=self.timeout, json=template_body(address, message))
        answer = http.json_object(body) or {}
        if not http.successful(status):
            error = answer.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            raise http.refusal(status, str(code) if isinstance(code, int) else None, slow_down=THROTTLED)
        messages = answer.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        message_id = first.get("id") if isinstance(first, dict) else None
        if not isinstance(message_id, str) or not message_id:
            raise TransientFailure("bad-answer")
        return Receipt(str(status), message_id)

    def close(self, *, polite: bool = True) -> None:
        self.session.close()
