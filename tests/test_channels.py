"""SMS, WhatsApp and webhooks against fake providers that answer as Twilio,
Meta and a receiver do: the exact requests, what each answer means for the
delivery, the pace of each channel, and webhook signatures checked as a
receiver checks them."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from urllib.parse import parse_qsl

import eventlet
import pytest

from contracts.webhook_signature import WebhookRefused, sign, verify
from services.notifications.adapters.channels import senders_from_config
from services.notifications.adapters.channels.base import Outgoing, PermanentRejection, Receipt, TransientFailure
from services.notifications.adapters.channels.ratelimit import RateLimited
from services.notifications.adapters.channels.sms import SmsSender
from services.notifications.adapters.channels.webhook import WebhookSender, acceptable_url
from services.notifications.adapters.channels.whatsapp import WhatsAppSender
from tests.conftest import ROOT, free_port
from tests.support.providers import FakeProviders, Hang
from warmi.providersink import Answer, basic_auth, meta_error, twilio_error

ACCOUNT, TOKEN, FROM = "AC0123456789abcdef0123456789abcdef", "twilio-token", "+15005550006"
PHONE_ID, WA_TOKEN = "106540352242922", "meta-token"
PHONE = "+51987654321"
SECRET = "whsec-first"

SMS = Outgoing("sms", "", "[Warmi] Caso CEC-2026-0001: revise https://warmi.test.invalid/c/1")
WHATSAPP = Outgoing("whatsapp", "", "Caso CEC-2026-0001", template="warmi_case_opened", language="es",
                    parameters=("CEC-2026-0001", "https://warmi.test.invalid/c/1"))
WEBHOOK = Outgoing("webhook", "", "Caso CEC-2026-0001: revise el enlace", kind="case_opened",
                   case_code="CEC-2026-0001", link="https://warmi.test.invalid/c/1")


@pytest.fixture
def providers():
    server = FakeProviders(account=(ACCOUNT, TOKEN), whatsapp_token=WA_TOKEN)
    yield server
    server.close()


def sms_sender(providers, **kwargs):
    kwargs.setdefault("sender", FROM)
    return SmsSender(f"{providers.url}/sms", ACCOUNT, TOKEN, **kwargs)


def whatsapp_sender(providers, **kwargs):
    return WhatsAppSender(f"{providers.url}/whatsapp", PHONE_ID, WA_TOKEN, **kwargs)


def webhook_sender(**kwargs):
    kwargs.setdefault("secrets", SECRET)
    return WebhookSender(**kwargs)


# -- what each provider receives ---------------------------------------------

def test_an_sms_is_the_form_twilio_expects_with_basic_auth_and_the_idempotency_token(providers):
    receipt = sms_sender(providers).send(PHONE, SMS, key="n1:r1:sms")

    [request] = providers.requests
    assert (request.method, request.path) == ("POST", "/sms/Messages.json")
    assert request.header("Authorization") == basic_auth(ACCOUNT, TOKEN)
    assert request.header("I-Twilio-Idempotency-Token") == "n1:r1:sms"
    assert request.header("Content-Type") == "application/x-www-form-urlencoded"
    assert parse_qsl(request.body.decode()) == [("To", PHONE), ("From", FROM), ("Body", SMS.text)]
    assert receipt.code == "201" and re.fullmatch(r"SM[0-9a-f]{32}", receipt.provider_id)


def test_a_messaging_service_takes_the_place_of_from_and_a_status_callback_goes_along(providers):
    sender = sms_sender(providers, sender=None, messaging_service_sid="MG0123",
                        status_callback="https://warmi.test.invalid/sms-status")
    sender.send(PHONE, SMS, key="k")

    assert providers.requests[0].data == {
        "To": PHONE, "MessagingServiceSid": "MG0123", "Body": SMS.text,
        "StatusCallback": "https://warmi.test.invalid/sms-status",
    }


def test_sms_without_a_sender_or_credentials_is_a_configuration_error():
    with pytest.raises(ValueError):
        SmsSender("http://127.0.0.1:9/sms", ACCOUNT, TOKEN)
    with pytest.raises(ValueError):
        SmsSender("http://127.0.0.1:9/sms", ACCOUNT, "", sender=FROM)


def test_a_whatsapp_message_is_the_template_message_meta_expects(providers):
    receipt = whatsapp_sender(providers).send(PHONE, WHATSAPP, key="n1:r1:whatsapp")

    [request] = providers.requests
    assert (request.method, request.path) == ("POST", f"/whatsapp/{PHONE_ID}/messages")
    assert request.header("Authorization") == f"Bearer {WA_TOKEN}"
    assert request.header("Content-Type") == "application/json"
    assert json.loads(request.body) == {
        "messaging_product": "whatsapp",
        "to": "51987654321",
        "type": "template",
        "template": {
            "name": "warmi_case_opened",
            "language": {"code": "es"},
            "components": [{"type": "body", "parameters": [
                {"type": "text", "text": "CEC-2026-0001"},
                {"type": "text", "text": "https://warmi.test.invalid/c/1"},
            ]}],
        },
    }
    assert receipt.code == "200" and receipt.provider_id.startswith("wamid.")


def test_a_template_without_parameters_has_no_components(providers):
    message = Outgoing("whatsapp", "", "", template="warmi_digest", language="en")
    whatsapp_sender(providers).send(PHONE, message, key="k")
    assert json.loads(providers.requests[0].body)["template"] == {"name": "warmi_digest", "language": {"code": "en"}}


@pytest.mark.parametrize("message", [
    Outgoing("whatsapp", "", "free text only"),
    Outgoing("whatsapp", "", "no language", template="warmi_case_opened"),
])
def test_whatsapp_never_sends_free_text(providers, message):
    with pytest.raises(PermanentRejection) as refused:
        whatsapp_sender(providers).send(PHONE, message, key="k")
    assert refused.value.code == "no-template"
    assert providers.requests == []


@pytest.mark.parametrize("address", ["987654321", "51987654321", "+051987654321", "+51 987 654 321",
                                     "+1234567890123456", "+", "", "+51987654321\n"])
@pytest.mark.parametrize("channel", ["sms", "whatsapp"])
def test_a_number_that_is_not_e164_is_refused_without_asking_the_provider(providers, channel, address):
    sender, message = (sms_sender(providers), SMS) if channel == "sms" else (whatsapp_sender(providers), WHATSAPP)
    with pytest.raises(PermanentRejection) as refused:
        sender.send(address, message, key="k")
    assert refused.value.code == "bad-address"
    assert providers.requests == []


def test_a_webhook_is_the_signed_json_a_receiver_verifies(providers):
    sender = webhook_sender()
    before = int(time.time())
    receipt = sender.send(f"{providers.url}/webhook/cec", WEBHOOK, key="n1:r1:webhook")

    [request] = providers.requests
    assert (request.method, request.path) == ("POST", "/webhook/cec")
    assert request.header("Content-Type") == "application/json; charset=utf-8"
    assert request.header("X-Warmi-Delivery") == "n1:r1:webhook"
    timestamp = int(request.header("X-Warmi-Timestamp"))
    assert before <= timestamp <= time.time()
    assert request.header("X-Warmi-Signature") == sign(SECRET, timestamp, request.body)
    body = json.loads(request.body)
    assert set(body) == {"id", "kind", "case_code", "link", "text", "sent_at"}
    assert body["id"] == "n1:r1:webhook" and body["kind"] == "case_opened"
    assert (body["case_code"], body["link"], body["text"]) == (WEBHOOK.case_code, WEBHOOK.link, WEBHOOK.text)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["sent_at"])
    assert receipt == Receipt("200")
    assert verify([SECRET], request.headers, request.body) == "n1:r1:webhook"


def test_one_session_carries_many_messages_over_one_connection(providers):
    sender = sms_sender(providers)
    for n in range(5):
        sender.send(PHONE, SMS, key=f"n{n}:r:sms")
    assert len(providers.requests) == 5
    assert providers.connections == 1
    sender.close()


# -- what the provider's answer means ------------------------------------------

def bare(failure: Exception) -> bool:
    """The failure says its code and nothing else; nothing chained to it
    (an error naming the URL or the number) shows in a traceback."""
    return str(failure) == failure.code and failure.__cause__ is None and (
        failure.__context__ is None or failure.__suppress_context__)


def send_one(providers, channel):
    if channel == "sms":
        return sms_sender(providers, timeout=(1.0, 0.3)).send(PHONE, SMS, key="k")
    if channel == "whatsapp":
        return whatsapp_sender(providers, timeout=(1.0, 0.3)).send(PHONE, WHATSAPP, key="k")
    return webhook_sender(timeout=(1.0, 0.3)).send(f"{providers.url}/webhook/x", WEBHOOK, key="k")


@pytest.mark.parametrize("channel", ["sms", "whatsapp", "webhook"])
@pytest.mark.parametrize("status, failure", [
    (400, PermanentRejection), (401, PermanentRejection), (404, PermanentRejection), (410, PermanentRejection),
    (408, TransientFailure), (429, TransientFailure), (500, TransientFailure), (502, TransientFailure),
    (503, TransientFailure),
])
def test_an_error_status_is_a_permanent_or_a_transient_failure(providers, channel, status, failure):
    providers.program(channel, status)
    with pytest.raises(failure) as failed:
        send_one(providers, channel)
    assert type(failed.value) is failure
    assert failed.value.code == f"http-{status}"
    assert bare(failed.value)


@pytest.mark.parametrize("channel", ["sms", "whatsapp", "webhook"])
def test_after_the_programmed_failures_the_provider_takes_messages_again(providers, channel):
    providers.program(channel, 503, 503)
    for _ in range(2):
        with pytest.raises(TransientFailure):
            send_one(providers, channel)
    assert send_one(providers, channel).code in ("200", "201")


@pytest.mark.parametrize("channel, body", [
    ("sms", b"<html>proxy error</html>"), ("sms", b'{"status": "queued"}'), ("sms", b"[]"), ("sms", b""),
    ("whatsapp", b"<html>proxy error</html>"), ("whatsapp", b'{"messages": []}'),
    ("whatsapp", b'{"messages": [{"id": ""}]}'), ("whatsapp", b""),
])
def test_a_success_without_the_message_id_may_not_have_been_taken(providers, channel, body):
    providers.program(channel, Answer(200, body, "text/html"))
    with pytest.raises(TransientFailure) as failed:
        send_one(providers, channel)
    assert failed.value.code == "bad-answer"


def test_a_webhook_receiver_need_only_answer_2xx(providers):
    providers.program("webhook", Answer(204), Answer(202, b"<html>thanks</html>", "text/html"))
    assert send_one(providers, "webhook") == Receipt("204")
    assert send_one(providers, "webhook") == Receipt("202")


@pytest.mark.parametrize("channel, answer, failure, code", [
    ("sms", twilio_error(400, 21211, "The 'To' number is not a valid phone number."), PermanentRejection, "21211"),
    ("sms", twilio_error(429, 20429, "Too Many Requests"), TransientFailure, "20429"),
    ("sms", twilio_error(503, 20503, "Service unavailable"), TransientFailure, "20503"),
    ("whatsapp", meta_error(400, 131026, "Message undeliverable"), PermanentRejection, "131026"),
    ("whatsapp", meta_error(400, 131047, "Re-engagement message"), PermanentRejection, "131047"),
    ("whatsapp", meta_error(400, 130429, "Rate limit hit"), TransientFailure, "130429"),
    ("whatsapp", meta_error(400, 131056, "Pair rate limit hit"), TransientFailure, "131056"),
    ("whatsapp", meta_error(500, 131000, "Something went wrong"), TransientFailure, "131000"),
])
def test_the_providers_own_error_code_is_the_failures_code(providers, channel, answer, failure, code):
    providers.program(channel, answer)
    with pytest.raises(failure) as failed:
        send_one(providers, channel)
    assert type(failed.value) is failure and failed.value.code == code


def test_wrong_credentials_are_refused_as_the_providers_refuse_them(providers):
    with pytest.raises(PermanentRejection) as sms:
        SmsSender(f"{providers.url}/sms", ACCOUNT, "wrong", sender=FROM).send(PHONE, SMS, key="k")
    with pytest.raises(PermanentRejection) as whatsapp:
        WhatsAppSender(f"{providers.url}/whatsapp", PHONE_ID, "wrong").send(PHONE, WHATSAPP, key="k")
    assert (sms.value.code, whatsapp.value.code) == ("20003", "190")


@pytest.mark.parametrize("channel", ["sms", "whatsapp", "webhook"])
def test_a_provider_that_hangs_is_given_up_on_after_the_read_timeout(providers, channel):
    providers.program(channel, Hang(5))
    started = time.monotonic()
    with pytest.raises(TransientFailure) as failed:
        send_one(providers, channel)  # read timeout 0.3 s
    assert failed.value.code == "ReadTimeout"
    assert time.monotonic() - started < 2
    assert send_one(providers, channel).code in ("200", "201")  # the next one goes out on a fresh connection


@pytest.mark.parametrize("channel", ["sms", "whatsapp"])
def test_no_server_is_a_transient_failure(channel):
    url = f"http://127.0.0.1:{free_port()}"
    sender = (SmsSender(f"{url}/sms", ACCOUNT, TOKEN, sender=FROM) if channel == "sms"
              else WhatsAppSender(f"{url}/whatsapp", PHONE_ID, WA_TOKEN))
    with pytest.raises(TransientFailure) as failed:
        sender.send(PHONE, SMS if channel == "sms" else WHATSAPP, key="k")
    assert failed.value.code == "ConnectionError"
    assert bare(failed.value)


def test_a_redirect_is_not_followed(providers):
    providers.program("webhook", Answer(302, b"", "text/plain"))
    with pytest.raises(PermanentRejection) as refused:
        send_one(providers, "webhook")
    assert refused.value.code == "http-302"
    assert len(providers.settled(quiet=0.3)) == 1


# -- webhooks: what is sent where, and what a receiver accepts ---------------------

@pytest.mark.parametrize("url, ok", [
    ("https://hooks.cec.test.invalid/warmi", True),
    ("https://hooks.cec.test.invalid:8443/warmi?org=cec", True),
    ("http://127.0.0.1:8026/webhook", True),
    ("http://localhost/webhook", True),
    ("http://[::1]:8026/webhook", True),
    ("http://hooks.cec.test.invalid/warmi", False),  # a case code in clear over a network
    ("http://10.0.0.5/warmi", False),
    ("ftp://hooks.cec.test.invalid/warmi", False),
    ("https://user:pw@hooks.cec.test.invalid/", False),
    ("https://hooks.cec.test.invalid:99999/", False),
    ("https:///nohost", False),
    ("hooks.cec.test.invalid/warmi", False),
    ("", False),
])
def test_a_webhook_goes_over_https_or_to_this_machine_only(url, ok):
    assert acceptable_url(url) is ok


def test_a_webhook_to_an_unacceptable_url_is_refused_without_a_request(providers):
    with pytest.raises(PermanentRejection) as refused:
        webhook_sender().send("http://hooks.cec.test.invalid/warmi", WEBHOOK, key="k")
    assert refused.value.code == "bad-address"


def test_without_a_secret_no_webhook_is_sent(providers):
    with pytest.raises(PermanentRejection) as refused:
        WebhookSender(None).send(f"{providers.url}/webhook/x", WEBHOOK, key="k")
    assert refused.value.code == "no-secret"
    assert providers.requests == []


def sent_webhook(providers, secrets=SECRET, clock=time.time, key="n1:r1:webhook"):
    WebhookSender(secrets, clock=clock).send(f"{providers.url}/webhook/x", WEBHOOK, key=key)
    return providers.requests[-1]


def test_a_replayed_delivery_is_refused(providers):
    request = sent_webhook(providers)
    seen = set()
    assert verify(SECRET, request.headers, request.body, seen=seen) == "n1:r1:webhook"
    with pytest.raises(WebhookRefused) as refused:
        verify(SECRET, request.headers, request.body, seen=seen)
    assert refused.value.reason == "replayed"


def test_a_repeat_of_a_delivery_is_signed_afresh_and_still_recognised(providers):
    first = sent_webhook(providers, clock=lambda: time.time() - 60)
    again = sent_webhook(providers)
    assert first.header("X-Warmi-Signature") != again.header("X-Warmi-Signature")
    seen = set()
    verify(SECRET, first.headers, first.body, seen=seen)
    with pytest.raises(WebhookRefused) as refused:
        verify(SECRET, again.headers, again.body, seen=seen)
    assert refused.value.reason == "replayed"


def test_a_stale_timestamp_is_refused(providers):
    request = sent_webhook(providers, clock=lambda: time.time() - 301)
    with pytest.raises(WebhookRefused) as refused:
        verify(SECRET, request.headers, request.body)
    assert refused.value.reason == "stale"
    timestamp = int(request.header("X-Warmi-Timestamp"))
    assert verify(SECRET, request.headers, request.body, now=timestamp + 300) == "n1:r1:webhook"
    with pytest.raises(WebhookRefused):
        verify(SECRET, request.headers, request.body, now=timestamp - 301)  # from the future too


@pytest.mark.parametrize("tamper", ["body", "case code", "timestamp", "signature", "delivery header"])
def test_a_tampered_request_is_refused(providers, tamper):
    request = sent_webhook(providers)
    headers, body = dict(request.headers), request.body
    if tamper == "body":
        body = body.replace(b'"kind":"case_opened"', b'"kind":"case_closed"')
    elif tamper == "case code":
        body = body.replace(b"CEC-2026-0001", b"CEC-2026-0002")
    elif tamper == "timestamp":
        headers["X-Warmi-Timestamp"] = str(int(headers["X-Warmi-Timestamp"]) - 1)
    elif tamper == "signature":
        headers["X-Warmi-Signature"] = headers["X-Warmi-Signature"][:-1] + "0"
        if headers["X-Warmi-Signature"] == request.header("X-Warmi-Signature"):
            headers["X-Warmi-Signature"] = headers["X-Warmi-Signature"][:-1] + "1"
    else:
        headers["X-Warmi-Delivery"] = "n2:r1:webhook"  # the header is not signed; the body's id is
    assert body != request.body or headers != request.headers
    with pytest.raises(WebhookRefused) as refused:
        verify(SECRET, headers, body, seen=set())
    assert refused.value.reason == ("other-delivery" if tamper == "delivery header" else "bad-signature")


def test_a_rotated_secret_is_accepted_while_the_receiver_holds_both(providers):
    request = sent_webhook(providers, secrets="whsec-new,whsec-old")  # signed with the first
    assert verify("whsec-old,whsec-new", request.headers, request.body) == "n1:r1:webhook"
    assert verify(["whsec-new"], request.headers, request.body) == "n1:r1:webhook"
    with pytest.raises(WebhookRefused) as refused:
        verify(["whsec-old"], request.headers, request.body)
    assert refused.value.reason == "bad-signature"


@pytest.mark.parametrize("missing", ["X-Warmi-Delivery", "X-Warmi-Timestamp", "X-Warmi-Signature"])
def test_a_request_without_a_warmi_header_is_refused(providers, missing):
    request = sent_webhook(providers)
    headers = {k: v for k, v in request.headers.items() if k.lower() != missing.lower()}
    with pytest.raises(WebhookRefused) as refused:
        verify(SECRET, headers, request.body)
    assert refused.value.reason == "missing-header"


def test_headers_are_matched_in_any_case_and_a_bad_timestamp_or_body_is_refused():
    body, stamp = b'{"id": "d1"}', int(time.time())
    headers = {"x-warmi-delivery": "d1", "X-WARMI-TIMESTAMP": str(stamp), "x-Warmi-Signature": sign(SECRET, stamp, body)}
    assert verify(SECRET, headers, body) == "d1"
    with pytest.raises(WebhookRefused) as refused:
        verify(SECRET, {**headers, "X-WARMI-TIMESTAMP": "12e3"}, body)
    assert refused.value.reason == "bad-timestamp"
    for bad in (b"[1]", b"not json"):
        signed = {**headers, "x-Warmi-Signature": sign(SECRET, stamp, bad)}
        with pytest.raises(WebhookRefused) as refused:
            verify(SECRET, signed, bad)
        assert refused.value.reason == "bad-body"


def test_a_receiver_that_checks_signatures_takes_warmis_and_refuses_a_stranger():
    receiver = FakeProviders(webhook_secrets="whsec-new,whsec-old")
    try:
        url = f"{receiver.url}/webhook/cec"
        assert WebhookSender("whsec-old").send(url, WEBHOOK, key="n1:r1:webhook") == Receipt("200")
        assert WebhookSender("whsec-old").send(url, WEBHOOK, key="n1:r1:webhook") == Receipt("200")  # a repeat
        with pytest.raises(PermanentRejection) as refused:
            WebhookSender("whsec-guess").send(url, WEBHOOK, key="n2:r1:webhook")
        assert refused.value.code == "http-401"
    finally:
        receiver.close()


# -- pace ----------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


class Counting:
    channel = "sms"

    def __init__(self, fail: Exception | None = None):
        self.sent, self.closed, self.fail = [], [], fail

    def send(self, address, message, *, key):
        if self.fail:
            raise self.fail
        self.sent.append(key)
        return Receipt("201", key)

    def close(self, *, polite=True):
        self.closed.append(polite)


def test_a_burst_goes_at_once_and_the_rest_wait_their_turn():
    clock, inner = Clock(), Counting()
    limited = RateLimited(inner, per_second=2, burst=3, clock=clock, sleep=clock.sleep)

    for n in range(6):
        limited.send(PHONE, SMS, key=f"k{n}")

    assert inner.sent == [f"k{n}" for n in range(6)]
    assert clock.slept == [0.5, 1.0, 1.5]  # the 4th, 5th and 6th, each half a second after the one before


def test_tokens_come_back_with_time_up_to_the_burst():
    clock, inner = Clock(), Counting()
    limited = RateLimited(inner, per_second=2, burst=3, clock=clock, sleep=clock.sleep)
    for n in range(3):
        limited.send(PHONE, SMS, key=f"a{n}")
    clock.now += 1.0  # two tokens back
    for n in range(3):
        limited.send(PHONE, SMS, key=f"b{n}")
    assert clock.slept == [0.5]
    clock.now += 3600  # a quiet hour brings back a burst, no more
    for n in range(4):
        limited.send(PHONE, SMS, key=f"c{n}")
    assert clock.slept == [0.5, 0.5]


def test_concurrent_senders_each_get_their_own_turn():
    clock = Clock()
    limited = RateLimited(Counting(), per_second=4, burst=2, clock=clock, sleep=clock.sleep)
    pool = eventlet.GreenPool()
    for n in range(10):
        pool.spawn(limited.send, PHONE, SMS, key=f"k{n}")
    pool.waitall()
    assert sorted(clock.slept) == [0.25 * n for n in range(1, 9)]  # 2 at once, 8 queued a quarter second apart


def test_the_wrapped_senders_receipt_failures_and_close_pass_through():
    clock = Clock()
    ok = RateLimited(Counting(), per_second=1, burst=1, clock=clock, sleep=clock.sleep)
    assert ok.channel == "sms" and ok.send(PHONE, SMS, key="k") == Receipt("201", "k")
    failing = RateLimited(Counting(fail=PermanentRejection("21211")), per_second=1, burst=1, clock=clock,
                          sleep=clock.sleep)
    with pytest.raises(PermanentRejection):
        failing.send(PHONE, SMS, key="k")
    ok.close(polite=False)
    assert ok.sender.closed == [False]


@pytest.mark.parametrize("per_second, burst", [(0, 1), (-1, 1), (1, 0)])
def test_a_rate_must_let_something_through(per_second, burst):
    with pytest.raises(ValueError):
        RateLimited(Counting(), per_second=per_second, burst=burst)


# -- configuration -------------------------------------------------------------------

def test_by_default_only_email_and_webhooks_are_on(monkeypatch):
    from servicekit.config import load_config

    for name in ("SMS_URL", "WHATSAPP_URL", "WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    senders = senders_from_config(load_config("notifications"), pool_size=4)
    try:
        assert set(senders) == {"email", "webhook"}
        assert all(isinstance(s, RateLimited) for s in senders.values())
        assert senders["email"].per_second == 1000 and senders["webhook"].per_second == 100
        with pytest.raises(PermanentRejection) as refused:  # on, but unsigned it sends nothing
            senders["webhook"].send("https://hooks.cec.test.invalid/", WEBHOOK, key="k")
        assert refused.value.code == "no-secret"
    finally:
        for sender in senders.values():
            sender.close()


def test_each_configured_channel_is_built_with_its_rate_and_timeouts(providers, monkeypatch):
    from servicekit.config import load_config

    environment = {
        "SMS_URL": f"{providers.url}/sms", "SMS_ACCOUNT_SID": ACCOUNT, "SMS_AUTH_TOKEN": TOKEN, "SMS_FROM": FROM,
        "WHATSAPP_URL": f"{providers.url}/whatsapp", "WHATSAPP_PHONE_NUMBER_ID": PHONE_ID,
        "WHATSAPP_TOKEN": WA_TOKEN, "WEBHOOK_SECRET": f"{SECRET},whsec-old", "SMS_RATE_PER_SECOND": "0.5",
        "HTTP_CONNECT_TIMEOUT_SECONDS": "1.5", "HTTP_READ_TIMEOUT_SECONDS": "4",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    senders = senders_from_config(load_config("notifications"), pool_size=4)
    try:
        assert set(senders) == {"email", "sms", "whatsapp", "webhook"}
        assert {c: s.channel for c, s in senders.items()} == {c: c for c in senders}
        assert (senders["sms"].per_second, senders["sms"].burst) == (0.5, 1)
        assert (senders["whatsapp"].per_second, senders["whatsapp"].burst) == (20, 20)
        for channel in ("sms", "whatsapp", "webhook"):
            assert senders[channel].sender.timeout == (1.5, 4.0)

        assert senders["sms"].send(PHONE, SMS, key="k1").code == "201"
        assert senders["whatsapp"].send(PHONE, WHATSAPP, key="k2").code == "200"
        assert senders["webhook"].send(f"{providers.url}/webhook/cec", WEBHOOK, key="k3").code == "200"
        assert [r.channel for r in providers.requests] == ["sms", "whatsapp", "webhook"]
        assert providers.requests[0].data["From"] == FROM  # a phone stays text, not a YAML number
        assert providers.requests[1].path == f"/whatsapp/{PHONE_ID}/messages"
        request = providers.requests[2]
        assert verify(SECRET, request.headers, request.body) == "k3"
    finally:
        for sender in senders.values():
            sender.close()


# -- the local sink ------------------------------------------------------------------

def test_the_provider_sink_keeps_each_message_and_prints_no_text(tmp_path):
    port, folder = free_port(), tmp_path / "sink"
    environment = {**os.environ, "WEBHOOK_SECRET": SECRET}
    process = subprocess.Popen(
        [sys.executable, "-m", "warmi.cli", "provider-sink", "--port", str(port), "--folder", str(folder)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )
    try:
        assert process.stdout.readline().startswith(f"provider sink on http://127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}"
        SmsSender(f"{url}/sms", ACCOUNT, TOKEN, sender=FROM).send(PHONE, SMS, key="n1:r1:sms")
        WhatsAppSender(f"{url}/whatsapp", PHONE_ID, WA_TOKEN).send(PHONE, WHATSAPP, key="n1:r1:whatsapp")
        WebhookSender(SECRET).send(f"{url}/webhook/cec", WEBHOOK, key="n1:r1:webhook")
        with pytest.raises(PermanentRejection):
            WebhookSender("whsec-guess").send(f"{url}/webhook/cec", WEBHOOK, key="n2:r1:webhook")
        lines = [process.stdout.readline().strip() for _ in range(4)]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)

    assert process.returncode == 0
    assert lines == [
        f"sms to {PHONE} ({len(SMS.text)} characters): 201",
        f"whatsapp to 51987654321 ({sum(map(len, WHATSAPP.parameters))} characters): 200",
        f"webhook to /webhook/cec ({len(WEBHOOK.text)} characters): 200",
        f"webhook to /webhook/cec ({len(WEBHOOK.text)} characters): 401",
    ]
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    records = [json.loads(p.read_text()) for p in files]
    assert [r["channel"] for r in records] == ["sms", "whatsapp", "webhook", "webhook"]
    assert records[0]["data"] == {"To": PHONE, "From": FROM, "Body": SMS.text}
    assert records[1]["data"]["template"]["name"] == "warmi_case_opened"
    assert records[2]["data"]["id"] == "n1:r1:webhook" and records[2]["status"] == 200
    assert all("authorization" not in {k.lower() for k in r["headers"]} for r in records)
    assert not list(folder.glob("*.part"))
