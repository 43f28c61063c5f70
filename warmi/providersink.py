"""A local stand-in for the SMS, WhatsApp and webhook providers, for trying
Warmi's channels on one machine (``warmi provider-sink``); the tests' fake
providers build on it.

It answers as the real ones do, on three routes:

- ``POST /sms/.../Messages.json``, Twilio's Messages API (form-encoded):
  201 with a message ``sid``, or Twilio's error JSON (``{"code": 21211,
  ...}``) for a missing or non-E.164 ``To``, no ``From`` nor
  ``MessagingServiceSid``, no ``Body``, or (when given ``account``) wrong
  basic-auth credentials;
- ``POST /whatsapp/<phone number id>/messages``, the WhatsApp Cloud API
  (JSON): 200 with ``{"messages": [{"id": "wamid..."}]}``, or Meta's error
  JSON (``{"error": {"code": 100, ...}}``) for anything but a well-formed
  template message, or (when given ``whatsapp_token``) a wrong bearer token;
- ``POST /webhook/...``, a webhook receiver: 200, or, when given
  ``webhook_secrets``, 401 with the reason a request fails
  ``contracts.webhook_signature.verify`` (a replayed delivery gets 200, as
  the receiver already has it).

``warmi provider-sink`` keeps each request as a JSON file (without its
``Authorization`` header) and prints one line for it: channel, recipient,
length and status; never the text.
"""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TextIO
from urllib.parse import parse_qsl

from contracts.webhook_signature import WebhookRefused, verify

E164 = re.compile(r"\+[1-9][0-9]{1,14}")
ROUTES = (
    ("sms", re.compile(r"/sms(/[^?]*)?/Messages\.json")),
    ("whatsapp", re.compile(r"/whatsapp/[^/?]+/messages")),
    ("webhook", re.compile(r"/webhook(/[^?]*)?")),
)


@dataclass(frozen=True)
class Received:
    """One request as it came: ``data`` is its form (SMS) or its JSON object
    (WhatsApp, webhook), or None when it could not be read as such."""

    channel: str  # "sms", "whatsapp", "webhook", or "" on no route
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    data: dict | None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    @property
    def to(self) -> str:
        data = self.data or {}
        if self.channel == "sms":
            return str(data.get("To", ""))
        if self.channel == "whatsapp":
            return str(data.get("to", ""))
        return self.path

    @property
    def length(self) -> int:
        """Characters of the text: the SMS body, the WhatsApp parameters, the
        webhook's text."""
        data = self.data or {}
        if self.channel == "sms":
            return len(str(data.get("Body", "")))
        if self.channel == "whatsapp":
            components = (data.get("template") or {}).get("components") or []
            return sum(len(p.get("text", "")) for c in components for p in c.get("parameters", []))
        return len(str(data.get("text", "")))


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, payload: dict) -> "Answer":
        return cls(status, json.dumps(payload).encode())


def twilio_error(status: int, code: int, message: str) -> Answer:
    return Answer.json(status, {"code": code, "message": message, "status": status,
                                "more_info": f"https://www.twilio.com/docs/errors/{code}"})


def meta_error(status: int, code: int, message: str) -> Answer:
    return Answer.json(status, {"error": {"message": message, "type": "OAuthException", "code": code,
                                          "fbtrace_id": uuid.uuid4().hex[:20]}})


def receive(method: str, path: str, headers: dict[str, str], body: bytes) -> Received:
    channel = next((name for name, route in ROUTES if route.fullmatch(path.split("?")[0])), "")
    data: dict | None = None
    if channel == "sms":
        try:
            data = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)))
        except (UnicodeDecodeError, ValueError):
            data = None
    elif channel:
        try:
            parsed = json.loads(body)
            data = parsed if isinstance(parsed, dict) else None
        except ValueError:
            data = None
    return Received(channel, method, path, headers, body, data)


class ProviderServer(ThreadingHTTPServer):
    """The three providers on one port. ``account`` ((sid, token)) and
    ``whatsapp_token`` make it check credentials; ``webhook_secrets`` make
    it check webhook signatures."""

    daemon_threads = True
    block_on_close = False  # a handler that still waits must not hold up a stop

    def __init__(self, address: tuple[str, int], *, account: tuple[str, str] | None = None,
                 whatsapp_token: str | None = None, webhook_secrets: str | list[str] | None = None):
        super().__init__(address, ProviderHandler)
        self.account, self.whatsapp_token, self.webhook_secrets = account, whatsapp_token, webhook_secrets
        self.seen: set[str] = set()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def respond(self, received: Received) -> Answer:
        """What the provider of ``received.channel`` answers."""
        if received.method != "POST":
            return Answer.json(405, {"message": "POST only"})
        if received.channel == "sms":
            return self.twilio(received)
        if received.channel == "whatsapp":
            return self.meta(received)
        if received.channel == "webhook":
            return self.receiver(received)
        return Answer.json(404, {"message": "no such route: /sms/.../Messages.json, /whatsapp/<id>/messages, /webhook/..."})

    def twilio(self, received: Received) -> Answer:
        if self.account and received.header("Authorization") != basic_auth(*self.account):
            return twilio_error(401, 20003, "Authenticate")
        form = received.data
        if form is None:
            return twilio_error(400, 20001, "Could not read the request")
        if not E164.fullmatch(form.get("To", "")):
            return twilio_error(400, 21211, "The 'To' number is not a valid phone number.")
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return twilio_error(400, 21603, "The source 'From' phone number is required to send an SMS")
        if not form.get("Body"):
            return twilio_error(400, 21602, "Message body is required.")
        return Answer.json(201, {
            "sid": f"SM{uuid.uuid4().hex}", "status": "queued", "to": form["To"], "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"), "num_segments": "1",
            "date_created": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()), "error_code": None,
        })

    def meta(self, received: Received) -> Answer:
        if self.whatsapp_token and received.header("Authorization") != f"Bearer {self.whatsapp_token}":
            return meta_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
        body = received.data or {}
        template = body.get("template")
        well_formed = (
            body.get("messaging_product") == "whatsapp" and str(body.get("to", "")).isdigit()
            and body.get("type") == "template" and isinstance(template, dict) and template.get("name")
            and isinstance(template.get("language"), dict) and template["language"].get("code")
        )
        if not well_formed:
            return meta_error(400, 100, "(#100) Invalid parameter")
        return Answer.json(200, {
            "messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": body["to"]}],
            "messages": [{"id": f"wamid.{uuid.uuid4().hex}", "message_status": "accepted"}],
        })

    def receiver(self, received: Received) -> Answer:
        if self.webhook_secrets:
            try:
                verify(self.webhook_secrets, received.headers, received.body, seen=self.seen)
            except WebhookRefused as refused:
                return Answer.json(200 if refused.reason == "replayed" else 401, {"error": refused.reason})
        return Answer.json(200, {"received": True})


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class ProviderHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real providers: clients reuse connections
    server: ProviderServer

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        received = receive(self.command, self.path, dict(self.headers.items()), body)
        answer = self.server.respond(received)
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
        except OSError:
            pass  # the client gave up waiting

    def log_message(self, format: str, *args) -> None:
        """Silent: the sink prints its own line, and a request line can hold a phone."""


class FolderSink(ProviderServer):
    """Keeps every request as a JSON file in ``folder`` and prints a line."""

    def __init__(self, folder: Path, address: tuple[str, int], *, out: TextIO = sys.stdout, **checks):
        super().__init__(address, **checks)
        self.folder, self.out = folder, out
        folder.mkdir(parents=True, exist_ok=True)

    def respond(self, received: Received) -> Answer:
        answer = super().respond(received)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{received.channel or 'unknown'}-{uuid.uuid4().hex[:8]}.json"
        record = {
            "channel": received.channel, "path": received.path, "status": answer.status,
            "headers": {k: v for k, v in received.headers.items() if k.lower() != "authorization"},
            "data": received.data if received.data is not None else received.body.decode("utf-8", "replace"),
        }
        tmp = self.folder / (name + ".part")
        tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False))
        tmp.rename(self.folder / name)  # readers never see half a file
        print(f"{received.channel or 'unknown'} to {received.to} ({received.length} characters): {answer.status}",
              file=self.out, flush=True)
        return answer


def run_provider_sink(folder: Path, host: str = "127.0.0.1", port: int = 8026) -> None:
    """Serve until SIGINT or SIGTERM. Webhooks are checked against
    ``WEBHOOK_SECRET`` when it is set."""
    server = FolderSink(folder, (host, port), webhook_secrets=os.environ.get("WEBHOOK_SECRET") or None)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"provider sink on {server.url} (/sms, /whatsapp, /webhook), writing to {folder}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
