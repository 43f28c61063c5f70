"""SMS through a provider shaped like Twilio's Messages API.

``POST {SMS_URL}/Messages.json``, form-encoded, with HTTP basic auth
(``SMS_ACCOUNT_SID``, ``SMS_AUTH_TOKEN``): ``To`` (E.164), ``From``
(``SMS_FROM``) or ``MessagingServiceSid`` (``SMS_MESSAGING_SERVICE_SID``,
which wins when both are set), ``Body`` and, when configured,
``StatusCallback``. With Twilio, ``SMS_URL`` is
``https://api.twilio.com/2010-04-01/Accounts/<account sid>``.

What holds:

- The delivery's key travels as ``I-Twilio-Idempotency-Token``, the header
  Twilio itself puts on the requests it repeats. A gateway that honours it
  drops a repeat of a delivery whose answer was lost; one that does not may
  deliver that repeat a second time.
- A ``To`` that is not an E.164 number (``+`` then up to 15 digits) is
  ``PermanentRejection("bad-address")``, and the provider is not asked.
- 201 or 200 with a JSON ``sid``: ``Receipt(status, sid)``. A 2xx without
  one may or may not have been taken: ``TransientFailure("bad-answer")``.
  Failures as in ``channels.http``, the code being Twilio's error code
  (``"21211"``, an invalid ``To``) when its answer carries one.
"""
from __future__ import annotations

import re

from services.notifications.adapters.channels import http
from services.notifications.adapters.channels.base import Outgoing, PermanentRejection, Receipt, TransientFailure

E164 = re.compile(r"\+[1-9][0-9]{1,14}")


def e164(address: str) -> bool:
    return E164.fullmatch(address) is not None


class SmsSender:
    channel = "sms"

    def __init__(self, url: str, account_sid: str, auth_token: str, *, sender: str | None = None,
                 messaging_service_sid: str | None = None, status_callback: str | None = None,
                 timeout: tuple[float, float] = http.TIMEOUT, pool_size: int = 10):
        if not (sender or messaging_service_sid):
            raise ValueError("SMS needs SMS_FROM or SMS_MESSAGING_SERVICE_SID")
        if not (account_sid and auth_token):
            raise ValueError("SMS needs SMS_ACCOUNT_SID and SMS_AUTH_TOKEN")
        self.url = f"{url.rstrip('/')}/Messages.json"
        self.origin = {"MessagingServiceSid": messaging_service_sid} if messaging_service_sid else {"From": sender}
        self.status_callback = status_callback
        self.timeout = timeout
        self.session = http.new_session(pool_size)
        self.session.auth = (account_sid, auth_token)

    def send(self, address: str, message: Outgoing, *, key: str) -> Receipt:
        """One SMS of ``message.text`` to ``address``."""
        if not e164(address):
            raise PermanentRejection("bad-address")
        form = {"To": address, **self.origin, "Body": message.text}
        if self.status_callback:
            form["StatusCallback"] = self.status_callback
        status, body = http.post(self.session, self.url, timeout=self.timeout, data=form,
                                 headers={"I-Twilio-Idempotency-Token": key, "Accept": "application/json"})
        answer = http.json_object(body) or {}
        if not http.successful(status):
            code = answer.get("code")
            raise http.refusal(status, str(code) if isinstance(code, int) else None)
        sid = answer.get("sid")
        if not isinstance(sid, str) or not sid:
            raise TransientFailure("bad-answer")
        return Receipt(str(status), sid)

    def close(self, *, polite: bool = True) -> None:
        self.session.close()
