"""No survivor detail in any notification, on any channel, nor in what the
notifications service logs or exposes, whatever the case holds.

A case of the most revealing kind (a minor's rape, high risk) is opened
through the gateway with a marker in every field that takes free text, and
the most telling value in every field that takes a choice; it is led,
classified, raised to high risk, worked on, closed and reopened, and every
rule fires for it, an organisation's webhook rules included. Then every
e-mail, every request to the SMS, WhatsApp and webhook providers, every log
record, the notifications' /metrics and what its tables keep of notices are
searched for the marker and for what would tell the incident type or the
survivor's age; every message must carry the case code."""
from __future__ import annotations

import email
import json
import re
from datetime import datetime
from email.header import decode_header, make_header
from urllib.parse import unquote_plus

import pytest
import requests
from sqlalchemy import text

from tests.conftest import handled, wait_until
from tests.support.api import edit
from tests.support.notify import publish
from tests.support.providers import FakeProviders

MARKER = "MARKER-7Q"
ACCOUNT, SMS_TOKEN, SMS_FROM = "AC0123456789abcdef0123456789abcdef", "twilio-token", "+15005550006"
PHONE_ID, WA_TOKEN = "106540352242922", "meta-token"
WEBHOOK_SECRET = "whsec-cec-office"
AGE_GROUP = "12-17"
# the incident type, the choices of the case that tell something of what happened, and the
# names of the steps only such a case has (a medical referral, a minor's mandatory report)
REVEALING = ("rape", "violación", "violacion", "sexual", "processing_plant", "buyer_trader",
             "possible_sexual_exploitation", "derivación médica", "medical referral", "denuncia obligatoria",
             "mandatory report")
# the age group as such: not the month and day of a date (2026-12-17) or a time
AGE = re.compile(r"(?<![\d-])" + re.escape(AGE_GROUP) + r"(?![\d-])")
# every default rule but the weekly digest, which is no case's
DEFAULT_RULES = {"critical_case_opened", "risk_high", "case_opened", "case_classified", "step_due_soon",
                 "step_overdue", "step_escalated", "case_closed", "case_reopened"}
# the organisation's own rules: its office hears of every case event the defaults hear of
OFFICE_RULES = (("case_opened", "case_opened"), ("risk_changed", "risk_high"), ("case_classified", "case_classified"),
                ("step_due_soon", "step_due_soon"), ("step_overdue", "step_overdue"),
                ("step_escalated", "step_escalated"), ("case_closed", "case_closed"),
                ("case_reopened", "case_reopened"))


@pytest.fixture
def providers():
    server = FakeProviders(account=(ACCOUNT, SMS_TOKEN), whatsapp_token=WA_TOKEN, webhook_secrets=WEBHOOK_SECRET)
    yield server
    server.close()


def office_rules(providers) -> str:
    """CEC's own rules: its office hears of every case event by webhook."""
    lines = [f"webhook_url: {providers.url}/webhook/cec", "rules:"]
    for event, kind in OFFICE_RULES:
        lines.append(f"  - {{name: office_{event}, event: {event}, to: [organization], urgency: normal, "
                     f"channels: [[webhook]], kind: {kind}}}")
    return "\n".join(lines) + "\n"


def people(stack) -> dict:
    """CEC, its president (WhatsApp, opted in herself), and a focal point,
    case lead and supervisor who each have an e-mail address and a phone."""
    from warmi.admin import create_organization, create_user

    org = create_organization(
        code="CEC", name="Cooperativa CEC", timezone_name="America/Lima", locale="es", country="PE",
        president_name="Presidenta", president_email="presidenta@cec.test.invalid", president_phone="+51900000001",
        focal_point_name="Punto focal",
    )
    stack.expect("cases", "organizations", "id", org["organization"]["id"])
    stack.expect("notifications", "recipients", "user_id", org["president"]["id"])
    made = {"organization_id": org["organization"]["id"], "president": org["president"]}
    for number, (role, locale, supervises) in enumerate(
            (("focal_point", "es", []), ("case_lead", "en", []), ("supervisor", "es", ["CEC"])), start=2):
        user = create_user(org_code="CEC", roles=[role], name=role, email=f"{role}@cec.test.invalid", locale=locale,
                           supervises=supervises, phone=f"+5190000000{number}")
        stack.expect("notifications", "recipients", "user_id", user["id"])
        made[role] = user
    opted = requests.put(
        f"{stack.url}/api/v1/me/notification-settings", timeout=15,
        json={"whatsapp_opt_in": True, "quiet_hours": None, "digest": None, "preferences": {}},
        headers={"Authorization": f"Bearer {org['president']['token']}", "If-Match": '"1"'},
    )
    assert opted.status_code == 200, opted.text
    engine = stack.database_engines()["notifications"]

    def opted_in():
        with engine.connect() as conn:
            return conn.execute(text("SELECT whatsapp_opt_in FROM recipients WHERE user_id = :u"),
                                {"u": org["president"]["id"]}).scalar() == 1

    wait_until(opted_in, message="the opt-in to reach notifications")
    return made


def heard(engine, handler: str, count: int = 1) -> None:
    wait_until(lambda: handled(engine, handler) >= count, timeout=30, message=f"notifications' {handler}")


def ok(response, status=200):
    assert response.status_code == status, (response.status_code, response.json().get("error", {}).get("code"))
    return response


def test_no_message_request_log_or_metric_of_notifications_tells_anything_of_the_survivor(
        stack, providers, captured_logs, tmp_path):
    overrides = tmp_path / "organizations"
    overrides.mkdir()
    (overrides / "CEC.yaml").write_text(office_rules(providers))
    stack.start_all(notifications=dict(
        SMS_URL=f"{providers.url}/sms", SMS_ACCOUNT_SID=ACCOUNT, SMS_AUTH_TOKEN=SMS_TOKEN, SMS_FROM=SMS_FROM,
        WHATSAPP_URL=f"{providers.url}/whatsapp", WHATSAPP_PHONE_NUMBER_ID=PHONE_ID, WHATSAPP_TOKEN=WA_TOKEN,
        WEBHOOK_SECRET=WEBHOOK_SECRET, NOTIFICATION_RULES_DIR=str(overrides)))
    team = people(stack)
    focal, president = team["focal_point"]["token"], team["president"]["token"]

    # -- the case, with the marker wherever the API takes free text --------------------------------
    opened = ok(stack.post_case(focal, {
        "age_group": AGE_GROUP, "minor": True, "sex": "female", "disability": True,
        "narrative": f"Relato de la sobreviviente {MARKER}", "survivor_name": f"Rosa {MARKER}",
        "place": "processing_plant", "perpetrator_relationship": "buyer_trader",
        "context_flags": ["possible_sexual_exploitation"],
    }, headers={"Idempotency-Key": f"{MARKER}-intake"}), 201).json()
    case_id, code = opened["id"], opened["survivor_code"]
    path = f"/cases/{case_id}"
    # each event comes on its own queue: the lead is assigned once notifications knows the case, and the
    # case classified once it knows her (a lead heard of before the case is lost: see test_notification_rules)
    engine = stack.database_engines()["notifications"]
    heard(engine, "handle_case_opened")
    ok(edit(stack, "POST", f"{path}/case-lead", president, {"case_lead_id": team["case_lead"]["id"]}))
    heard(engine, "handle_case_lead_assigned")
    ok(edit(stack, "POST", f"{path}/classification", president, {"answers": {
        "rape": True, "sexual_assault": False, "physical_assault": False, "forced_marriage": False,
        "denial_of_resources": False, "psychological_abuse": False}}))
    ok(edit(stack, "POST", f"{path}/risk", president, {"risk_level": "high"}))
    detail = ok(stack.get_case(president, case_id)).json()
    assert MARKER in detail["narrative"] and detail["incident_type"] == "rape" and detail["age_group"] == AGE_GROUP
    steps = {s["step_id"]: s for s in detail["plan"]["steps"]}
    assert {"R3", "M1"} <= set(steps), "a minor's rape has the medical referral and the mandatory report"

    # -- what the cases service's intake and sweep would publish for it: the case opened at high
    # risk (the API opens cases unassessed), the focal point's first step due soon, and the alerts
    # of the two steps that tell most (the medical referral, the mandatory report)
    organization_id = team["organization_id"]

    def alert(type_, step_id, **more):
        step = steps[step_id]
        publish(stack.amqp_uri, type_, organization_id=organization_id, case_id=case_id, data={
            "step_ref": step["ref"], "due_at": datetime.fromisoformat(step["due_at"]),
            "responsible": step["responsible"][0], **more})

    publish(stack.amqp_uri, "case_opened", organization_id=organization_id, case_id=case_id, data={
        "survivor_code": code, "opened_by": team["focal_point"]["id"],
        "opened_at": datetime.fromisoformat(opened["opened_at"]), "risk_level": "high"})
    alert("step_due_soon", "R0")
    alert("step_due_soon", "R3")
    alert("step_overdue", "M1")
    alert("step_escalated", "M1", rung="president")
    alert("step_escalated", "M1", rung="supervisor")
    ok(edit(stack, "POST", f"{path}/steps/R0/completion", focal, {"note": f"Nota del paso {MARKER}"}))

    ok(edit(stack, "POST", f"{path}/closure-approval", team["supervisor"]["token"]))
    ok(edit(stack, "POST", f"{path}/closure", president, {"reason": "survivor_agreed"}))
    ok(edit(stack, "POST", f"{path}/reopening", president, {"reason": "safety_concern"}))

    expected = {"handle_case_opened": 2, "handle_case_lead_assigned": 1, "handle_case_classified": 1,
                "handle_risk_changed": 1, "handle_step_completed": 1, "handle_step_due_soon": 2,
                "handle_step_overdue": 1, "handle_step_escalated": 2, "handle_case_closed": 1,
                "handle_case_reopened": 1}
    for handler, count in expected.items():
        heard(engine, handler, count)
    with engine.connect() as conn:
        fired = set(conn.execute(text("SELECT rule FROM notices WHERE case_id = :c"), {"c": case_id}).scalars())
        reached = set(conn.execute(text(
            "SELECT recipient_role FROM deliveries WHERE case_id = :c AND status = 'sent'"), {"c": case_id}).scalars())
    assert fired == DEFAULT_RULES | {f"office_{event}" for event, _ in OFFICE_RULES}
    assert reached == {"focal_point", "case_lead", "president", "supervisor", "organization"}

    # -- everything notifications let out -----------------------------------------------------------
    emails = [email.message_from_bytes(p.read_bytes()) for p in sorted(stack.smtp.mail.glob("*.eml"))]
    sent = providers.requests
    assert {r.channel for r in sent} == {"sms", "whatsapp", "webhook"} and len(emails) >= 10
    metrics = requests.get(f"http://127.0.0.1:{stack.metrics_ports['notifications']}/metrics", timeout=15).text
    assert "warmi_notifications_total" in metrics
    assert len(captured_logs) > 10  # the logs were really captured
    with engine.connect() as conn:
        held = {table: str(conn.execute(text(f'SELECT * FROM "{table}"')).all())
                for table in ("notices", "deliveries", "notice_log", "cases")}

    places = {"logs": "\n".join(captured_logs), "metrics": metrics, **held}
    for number, message in enumerate(emails):
        places[f"e-mail {number}"] = "\n".join([str(message), subject(message), *parts(message)])
    for number, request in enumerate(sent):
        places[f"{request.channel} request {number}"] = "\n".join([
            request.path, json.dumps(request.headers), request.body.decode("utf-8", "replace"),
            unquote_plus(request.body.decode("utf-8", "replace")), json.dumps(request.data, ensure_ascii=False)])

    for where, content in places.items():
        lowered = content.lower()
        found = [word for word in (MARKER.lower(), *REVEALING) if word in lowered]
        if AGE.search(content):
            found.append(AGE_GROUP)
        assert found == [], f"{where} tells {found}"

    # -- and every message names the case by its code -------------------------------------------
    for message in emails:
        assert code in subject(message) and all(code in part for part in parts(message))
    for request in sent:
        if request.channel == "sms":
            assert code in request.data["Body"]
        elif request.channel == "whatsapp":
            parameters = [p["text"] for c in request.data["template"]["components"] for p in c["parameters"]]
            assert code in parameters
        else:
            assert request.data["case_code"] == code and code in request.data["text"]
    kinds = {json.loads(r.body)["kind"] for r in sent if r.channel == "webhook"}
    assert kinds == {kind for _, kind in OFFICE_RULES}  # every office rule fired


def subject(message) -> str:
    return str(make_header(decode_header(message["Subject"])))


def parts(message) -> list[str]:
    return [p.get_payload(decode=True).decode(p.get_content_charset() or "utf-8")
            for p in message.walk() if not p.is_multipart()]
