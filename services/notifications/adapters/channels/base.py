"""The port every channel implements: one rendered message, one address, one
delivery key in; a receipt, or one of two failures, out.

What holds:

- ``send`` returns only once the provider has taken the message, with its
  answer code (and its message id, if it gives one).
- A failure is either ``PermanentRejection`` (the provider refused this
  message or address: trying again cannot help) or ``TransientFailure``
  (anything else: the delivery is tried again later). Both carry a short code
  and nothing more: never a body, an address or a phone number, so that they
  can be logged and stored as they are.
- ``key`` identifies the delivery ("{notice_id}:{recipient_id}:{channel}");
  a repeat of a delivery carries the same key, which the sender hands to the
  provider wherever the provider takes one, so that it can drop the repeat.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Outgoing:
    """One rendered message for one channel. Each channel reads the fields it
    needs: e-mail ``subject``, ``text`` and ``html``; SMS ``text``; WhatsApp
    ``template``, ``language`` and ``parameters``; a webhook ``kind``,
    ``case_code``, ``link`` and ``text``."""

    channel: str
    subject: str
    text: str
    html: str | None = None
    template: str | None = None
    language: str | None = None
    parameters: tuple[str, ...] = ()
    kind: str = ""
    case_code: str | None = None
    link: str | None = None


@dataclass(frozen=True)
class Receipt:
    """The provider took the message: its answer code ("250", "201", "200")
    and its id for the message, if it gave one."""

    code: str
    provider_id: str | None = None


class PermanentRejection(Exception):
    """The provider refused this message or address (a 4xx answer, a 5xx SMTP
    refusal, an address that cannot be one): never try it again."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


class TransientFailure(Exception):
    """The message may not have arrived (5xx or 429, 4xx SMTP, a timeout, a
    lost connection, an answer that makes no sense): try again later."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


class ChannelSender(Protocol):
    channel: str

    def send(self, address: str, message: Outgoing, *, key: str) -> Receipt: ...

    def close(self, *, polite: bool = True) -> None: ...
