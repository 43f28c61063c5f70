"""The one-tap acknowledgement page and the SMS reply webhook, served by the
gateway, against the real services and broker, on PostgreSQL and on SQLite.

A case whose risk is set high sends a critical notice; the president, with
e-mail only reachable, gets it by e-mail with the acknowledgement link. Opening
the link shows the case code and a button and acknowledges nothing; the button
acknowledges once; forged, unknown and expired links show neutral pages; a
signed SMS reply acknowledges too, and an unsigned one reaches nothing."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests
from prometheus_client import REGISTRY
from sqlalchemy import text

from services.gateway.acknowledge import reply_signature
from services.notifications.domain import acks
from tests.conftest import ACK_KEYS, wait_until
from tests.support.api import edit

PUBLIC_URL = "https://warmi.test.invalid"  # the notifications' PUBLIC_URL in the test stack
LINK = re.compile(re.escape(PUBLIC_URL) + r"/a/([A-Za-z0-9_-]{32})(?![A-Za-z0-9_-])")
PHONE = "+51987654321"
SMS_TOKEN = "twilio-auth-token-of-the-test"
INBOUND_URL = PUBLIC_URL + "/api/v1/inbound/sms"  # what the provider calls: not the test's own address
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
# what the case holds besides its code, none of which a page may show
NARRATIVE = "Relato que nadie fuera del comité debe leer"
SURVIVOR = "Rosa Quispe Mamani"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# -- without a stack ---------------------------------------------------------------------

def test_the_reply_signature_is_twilios_published_example():
    # https://www.twilio.com/docs/usage/security#validating-requests
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675310", "Digits": "1234", "From": "+14158675310",
              "To": "+18005551212"}
    assert reply_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2",
                           params.items()) == "GvWf1cFY/Q7PnoempGyD5oXAezc="


def test_the_page_leads_with_the_readers_language_and_spanish_without_one():
    from services.gateway.acknowledge import languages_for

    assert languages_for("") == ("es", "en")
    assert languages_for("qu-PE, ay;q=0.8") == ("es", "en")
    assert languages_for("en-GB,en;q=0.9") == ("en", "es")
    assert languages_for("en;q=0.4, es-PE;q=0.9") == ("es", "en")
    assert languages_for("es-PE,en;q=0.5") == ("es", "en")  # a regional Spanish still leads
    assert languages_for("qu, en;q=0.2") == ("en", "es")


# -- the whole stack -------------------------------------------------------------------

@pytest.fixture
def notice(any_stack):
    """A high-risk case, its president told by e-mail: (stack, the link's
    token, the case code)."""
    from warmi.admin import create_organization

    stack = any_stack
    stack.start_all(gateway={"SMS_AUTH_TOKEN": SMS_TOKEN, "SMS_INBOUND_URL": INBOUND_URL})
    org = create_organization(
        code="CEC", name="Cooperativa CEC", timezone_name="America/Lima", locale="es", country="PE",
        president_name="Presidenta", president_email="presidenta@cec.test.invalid", president_phone=PHONE,
        focal_point_name="Punto focal",
    )
    stack.expect("cases", "organizations", "id", org["organization"]["id"])
    stack.expect("notifications", "recipients", "user_id", org["president"]["id"])
    stack.user("CEC", "supervisor", supervises=["CEC"])
    president = org["president"]["token"]
    opened = stack.post_case(org["focal_point"]["token"], {"age_group": "18-25", "narrative": NARRATIVE,
                                                           "survivor_name": SURVIVOR})
    assert opened.status_code == 201, opened.text
    case = opened.json()
    # the risk is raised once notifications know the case (a risk_changed handled
    # before its case_opened would find no case code to put in the message)
    wait_until(lambda: known_to_notifications(stack, case["id"]), message="the case to reach the notifications")
    risk = edit(stack, "POST", f"/cases/{case['id']}/risk", president, {"risk_level": "high"})
    assert risk.status_code == 200, risk.text
    token = wait_until(lambda: ack_token(stack), timeout=30, message="the e-mail with the acknowledgement link")
    return stack, token, case["survivor_code"]


def known_to_notifications(stack, case_id: str) -> bool:
    with stack.engines["notifications"].connect() as conn:
        return conn.execute(text("SELECT 1 FROM cases WHERE case_id = :id"), {"id": case_id}).first() is not None


def ack_token(stack) -> str | None:
    for message in stack.smtp.messages():
        for part in message.walk():
            if part.get_content_type() == "text/plain":
                found = LINK.search(part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8"))
                if found:
                    return found.group(1)
    return None


def page(stack, method, token, **headers):
    return requests.request(method, f"{stack.url}/a/{token}", headers=headers, timeout=15, allow_redirects=False)


def used_at(stack, token):
    """When the link was used (None: not yet), read from the notifications' database."""
    ack_id = acks.verify(acks.AckKeys.parse(ACK_KEYS), token, datetime.now(timezone.utc)).hex()
    with stack.engines["notifications"].connect() as conn:
        return conn.execute(text("SELECT used_at FROM acks WHERE id = :id"), {"id": ack_id}).scalar_one()


def unacknowledged_notices(stack) -> int:
    with stack.engines["notifications"].connect() as conn:
        return conn.execute(text(
            "SELECT count(*) FROM notices WHERE urgency <> 'normal' AND acknowledged_at IS NULL")).scalar()


def assert_page_headers(answer):
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert answer.headers["Content-Security-Policy"] == CSP
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "<title>Warmi</title>" in answer.text
    assert "<script>" not in answer.text and "style=" not in answer.text  # nothing inline


def test_opening_the_link_shows_the_case_code_and_a_button_and_acknowledges_nothing(notice):
    stack, token, code = notice

    for _ in range(2):  # a link scanner, then the person
        shown = page(stack, "GET", token)
        assert shown.status_code == 200, shown.text
        assert_page_headers(shown)
        assert f"<h1>Caso {code} - confirme que vio este aviso</h1>" in shown.text
        assert '<form id="ack" method="post">' in shown.text and '<button type="submit">' in shown.text
        assert '<script src="static/ack.js" defer></script>' in shown.text
    assert used_at(stack, token) is None and unacknowledged_notices(stack) >= 1

    # the case code and nothing else of the case
    title = re.search(r"<title>(.*)</title>", shown.text).group(1)
    assert code not in title
    for secret in (NARRATIVE, SURVIVOR, "18-25", "high", "alto", "risk", "riesgo"):
        assert secret not in shown.text
    assert not UUID.search(shown.text)

    english = page(stack, "GET", token, **{"Accept-Language": "en-US,en;q=0.9"})
    assert english.status_code == 200 and english.headers["Content-Language"] == "en"
    assert '<html lang="en">' in english.text
    assert english.text.index(f"Case {code} - confirm you saw this notice") < english.text.index(f"Caso {code}")
    assert used_at(stack, token) is None


def services_logs(lines: list[str]) -> str:
    """The services' log lines (the test's own HTTP client logs its requests too)."""
    return "\n".join(line for line in lines if json.loads(line)["logger"] != "urllib3.connectionpool")


def test_the_button_acknowledges_once_and_the_climb_stops(notice, captured_logs):
    stack, token, code = notice
    waiting = unacknowledged_notices(stack)

    tapped = page(stack, "POST", token)
    assert tapped.status_code == 200, tapped.text
    assert_page_headers(tapped)
    assert f"Caso {code} - gracias, quedó confirmado" in tapped.text and "<form" not in tapped.text
    first = used_at(stack, token)
    assert first is not None and unacknowledged_notices(stack) == waiting - 1

    again = page(stack, "POST", token)
    assert again.status_code == 409 and f"Caso {code} - este aviso ya fue confirmado" in again.text
    assert_page_headers(again)
    shown = page(stack, "GET", token)
    assert shown.status_code == 200 and "ya fue confirmado" in shown.text and "<form" not in shown.text
    assert "ack.js" not in shown.text
    assert used_at(stack, token) == first
    logged = services_logs(captured_logs)
    assert "/a/<token>" in logged and token not in logged  # the access log hides the link's token


def test_forged_unknown_and_expired_links_get_neutral_pages_and_acknowledge_nothing(notice):
    stack, token, code = notice
    keys = acks.AckKeys.parse(ACK_KEYS)
    other_key = acks.AckKeys.parse("1:" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="))
    later, earlier = datetime.now(timezone.utc) + timedelta(days=1), datetime.now(timezone.utc) - timedelta(minutes=5)
    ack_id = acks.verify(keys, token, datetime.now(timezone.utc))
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    invalid = {
        "forged": forged,
        "another key": acks.issue(other_key, ack_id, later),
        "unknown": acks.issue(keys, os.urandom(8), later),
        "malformed": "not-a-token",
        "too long": "A" * 80,
    }

    answers = {}
    for name, bad in invalid.items():
        for method in ("GET", "POST"):
            answer = page(stack, method, bad)
            assert answer.status_code == 404, (name, method, answer.status_code)
            assert_page_headers(answer)
            assert "Enlace no válido" in answer.text and code not in answer.text and "<form" not in answer.text
            answers[name, method] = answer.text
    assert len(set(answers.values())) == 1  # a forged link and an unknown one look the same

    expired = acks.issue(keys, ack_id, earlier)
    for method in ("GET", "POST"):
        answer = page(stack, method, expired)
        assert answer.status_code == 410, (method, answer.status_code)
        assert_page_headers(answer)
        assert "Este enlace venció; abra la consola" in answer.text and code not in answer.text
    assert used_at(stack, token) is None
    assert page(stack, "GET", token).status_code == 200  # the real one still works


def test_the_page_script_and_style_are_served_from_the_gateway(notice):
    stack, token, _ = notice
    script = requests.get(f"{stack.url}/a/static/ack.js", timeout=15)
    assert script.status_code == 200 and script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert "form.submit()" in script.text and script.headers["X-Content-Type-Options"] == "nosniff"
    style = requests.get(f"{stack.url}/a/static/ack.css", timeout=15)
    assert style.status_code == 200 and style.headers["Content-Type"] == "text/css; charset=utf-8"
    assert "button" in style.text
    assert requests.get(f"{stack.url}/a/static/other.js", timeout=15).status_code == 404

    # the metrics name the route, never the token
    metrics = requests.get(f"http://127.0.0.1:{stack.metrics_ports['gateway']}/metrics", timeout=15).text
    assert 'route="/a/<token>"' in metrics
    assert token not in metrics


def twilio(params: dict, auth_token: str = SMS_TOKEN, url: str = INBOUND_URL) -> str:
    """X-Twilio-Signature as Twilio's documentation computes it."""
    data = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def reply(stack, params: dict, signature: str | None):
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    return requests.post(f"{stack.url}/api/v1/inbound/sms", data=params, headers=headers, timeout=15)


def sms_replies_handled() -> float:
    return REGISTRY.get_sample_value("warmi_rpc_duration_seconds_count",
                                     {"service": "notifications", "method": "sms_reply"}) or 0.0


def test_a_signed_sms_reply_acknowledges_and_an_unsigned_one_reaches_nothing(notice, captured_logs):
    stack, token, code = notice
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "AccountSid": "AC" + uuid.uuid4().hex, "From": PHONE,
              "To": "+51900000000", "Body": f"OK {code}", "NumMedia": "0"}
    calls = sms_replies_handled()

    refused = [
        reply(stack, params, None),
        reply(stack, params, "bm90IGEgc2lnbmF0dXJl"),
        reply(stack, params, twilio(params, auth_token="another-token")),
        reply(stack, params, twilio(params, url=stack.url + "/api/v1/inbound/sms")),  # not the configured URL
        reply(stack, {**params, "Body": "OK"}, twilio(params)),  # signed for another body
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert all(r.json()["error"]["code"] == "forbidden" for r in refused)
    assert sms_replies_handled() == calls and used_at(stack, token) is None

    answered = reply(stack, params, twilio(params))
    assert answered.status_code == 200, answered.text
    assert answered.headers["Content-Type"].startswith("text/xml")
    assert answered.text == '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    assert used_at(stack, token) is not None
    # the RPC is counted as its worker ends, just after its reply
    wait_until(lambda: sms_replies_handled() == calls + 1, message="the reply's one call to be counted")
    assert page(stack, "GET", token).text.count("ya fue confirmado") == 1
    logged = services_logs(captured_logs)
    assert PHONE not in logged and f"OK {code}" not in logged


def test_without_an_sms_auth_token_replies_are_off_and_pages_are_rate_limited(stack):
    stack.start("gateway", RATE_LIMIT_PER_MINUTE=4)  # and no notifications service
    params = {"From": PHONE, "Body": "OK"}
    off = reply(stack, params, twilio(params))
    assert off.status_code == 404 and off.json()["error"]["code"] == "not_found"

    away = page(stack, "GET", "A" * 32)
    assert away.status_code == 503 and away.headers["Retry-After"]
    assert "vuelva a intentarlo en unos minutos" in away.text
    assert_page_headers(away)
    answers = [page(stack, "GET", "not.a.token") for _ in range(4)]
    assert [a.status_code for a in answers] == [404, 404, 404, 429]
    held = answers[-1]
    assert int(held.headers["Retry-After"]) >= 1 and "Demasiados intentos" in held.text
    assert_page_headers(held)
