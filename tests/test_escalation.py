"""The climb of an unacknowledged notice and what stops it, quiet hours and
the weekly digest, against the real services, broker and providers, on
PostgreSQL and on SQLite, with the notifications service's clock fixed and
moved by the test (its timers tick every 0.2 s).

What holds:

- an overdue step reaches its case lead (SMS and e-mail) and the president;
  left unacknowledged past the rule's wait it climbs to the supervisor once,
  and nothing more goes out afterwards; the acknowledgement page of its
  link, or the step's completion, stops the climb; the case's history shows
  every step of it and never a body or an address;
- a normal message waits out the president's quiet hours in the
  organisation's zone, a critical one goes through at once;
- each president's weekly digest goes out once a week at her local day and
  hour (her own, or the default) with two notifications containers running,
  holding four counts and no case code.

The last three show that the order of a case's events does not matter (a
case lead or a risk heard of before the opening) and that the digest counts
the unacknowledged alerts of its own week.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.header import decode_header, make_header

import pytest
import requests
from sqlalchemy import text

from tests.conftest import handled, wait_until
from tests.support.api import edit
from tests.support.notify import Clock, fix_clock, nobody_excluded, publish, step_ref
from tests.support.providers import FakeProviders

ACCOUNT, SMS_TOKEN, SMS_FROM = "AC" + "0123456789abcdef" * 2, "twilio-token-of-the-test", "+15005550006"
PHONE_ID, WA_TOKEN = "106540352242922", "meta-token-of-the-test"
PUBLIC_URL = "https://warmi.test.invalid"  # the notifications' PUBLIC_URL in the test stack
LINK = re.compile(re.escape(PUBLIC_URL) + r"/a/([A-Za-z0-9_-]{32})(?![A-Za-z0-9_-])")
CASE_CODE = re.compile(r"[A-Z]{2,}-\d{4}-\d{4}")

PRESIDENT, SMP_PRESIDENT = "presidenta@cec.test.invalid", "presidenta@smp.test.invalid"  # Stack.organization's
LEAD, LEAD_PHONE = "lead@cec.test.invalid", "+51987650001"
SUPERVISOR, SUPERVISOR_PHONE = "supervision@cec.test.invalid", "+51987650002"

WAIT = timedelta(minutes=240)  # the default rule step_overdue's ack_wait_minutes
QUIET = {"start": "22:00", "end": "07:00"}  # Lima's wall clock


# -- the stack ----------------------------------------------------------------------------

@pytest.fixture
def providers():
    server = FakeProviders(account=(ACCOUNT, SMS_TOKEN), whatsapp_token=WA_TOKEN)
    yield server
    server.close()


def notifications_config(providers: FakeProviders) -> dict:
    """SMS and WhatsApp at the fake providers; timers that tick every 0.2 s."""
    return dict(
        SMS_URL=f"{providers.url}/sms", SMS_ACCOUNT_SID=ACCOUNT, SMS_AUTH_TOKEN=SMS_TOKEN, SMS_FROM=SMS_FROM,
        WHATSAPP_URL=f"{providers.url}/whatsapp", WHATSAPP_PHONE_NUMBER_ID=PHONE_ID, WHATSAPP_TOKEN=WA_TOKEN,
        WAKE_INTERVAL_SECONDS=0.2, DIGEST_INTERVAL_SECONDS=0.2,
    )


def start(stack, providers: FakeProviders, clock: Clock, *, replicas: int = 1):
    """Cases (its own deadline sweep held back: the tests publish the step
    events), ``replicas`` notifications containers on one fixed clock, and the
    gateway. The clocks are fixed before anyone exists who could be told of
    anything, so no timer acts on the real time."""
    from nameko.containers import ServiceContainer

    from warmi.registry import service_class

    stack.start("cases", DEADLINES={"SWEEP_INTERVAL_SECONDS": 3600})
    config = notifications_config(providers)
    fix_clock(stack.start("notifications", **config), clock)
    for number in range(1, replicas):
        replica = ServiceContainer(service_class("notifications"), stack.config("notifications", **config))
        replica.start()
        fix_clock(replica, clock)
        stack.containers[f"notifications:replica{number}"] = replica  # stopped with the others
    stack.start("gateway")


def person(stack, *roles, email, phone=None, whatsapp=False, supervises=()) -> dict:
    from warmi.admin import create_user

    made = create_user(org_code="CEC", roles=list(roles), name=" / ".join(roles), email=email, locale="es",
                       supervises=list(supervises), phone=phone, whatsapp=whatsapp)
    stack.expect("notifications", "recipients", "user_id", made["id"])
    return made


def open_case(stack, focal_point: str) -> dict:
    """A case opened through the gateway, once the notifications service knows
    it: an event of a case heard before its case_opened goes astray (see the
    last tests)."""
    opened = stack.post_case(focal_point, {"age_group": "18-25"})
    assert opened.status_code == 201, opened.text
    case = opened.json()
    wait_until(lambda: scalar(stack, "SELECT count(*) FROM cases WHERE case_id = :id", id=case["id"]),
               message="the notifications service to learn the case")
    return case


def lead_case(stack, case: dict, president: str, lead_id: str) -> None:
    """Give the case its lead, and wait until the notifications service knows."""
    assigned = edit(stack, "POST", f"/cases/{case['id']}/case-lead", president, {"case_lead_id": lead_id})
    assert assigned.status_code == 200, assigned.text
    wait_until(lambda: scalar(stack, "SELECT case_lead_id FROM cases WHERE case_id = :id", id=case["id"]) == lead_id,
               message="the notifications service to learn the case lead")


def my_settings(stack, token: str, **changes) -> None:
    """Replace her notification settings through the gateway, and wait until
    the notifications service has them."""
    url = f"{stack.url}/api/v1/me/notification-settings"
    headers = {"Authorization": f"Bearer {token}"}
    read = requests.get(url, headers=headers, timeout=15)
    assert read.status_code == 200, read.text
    body = {k: read.json()[k] for k in ("whatsapp_opt_in", "quiet_hours", "digest", "preferences")}
    put = requests.put(url, json={**body, **changes}, headers={**headers, "If-Match": read.headers["ETag"]},
                       timeout=15)
    assert put.status_code == 200, put.text
    wait_until(lambda: scalar(stack, "SELECT revision FROM recipients WHERE user_id = :id",
                              id=stack.user_id(token)) == put.json()["revision"],
               message="the notifications service to learn her settings")


# -- what arrived -------------------------------------------------------------------------

@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str


def mails(stack, to: str | None = None, subject: str = "") -> list[Mail]:
    """The e-mails received (to ``to``, with ``subject`` in their subject)."""
    found = []
    for message in stack.smtp.messages():
        plain = next(p for p in message.walk() if p.get_content_type() == "text/plain")
        found.append(Mail(message["To"], str(make_header(decode_header(message["Subject"]))),
                          plain.get_payload(decode=True).decode(plain.get_content_charset() or "utf-8")))
    return [m for m in found if (to is None or m.to == to) and subject in m.subject]


def overdue(code: str) -> str:
    return f"Paso vencido en el caso {code}"


def everything(stack, providers) -> tuple[int, int]:
    """How many e-mails and provider requests arrived, once none has for a second."""
    return len(stack.smtp.settled(quiet=1.0)), len(providers.settled(quiet=1.0))


def scalar(stack, sql: str, **params):
    with stack.database_engines()["notifications"].connect() as conn:
        return conn.execute(text(sql), params).scalar()


def log_of(stack, case_id: str, kind: str) -> list[tuple]:
    """The log of the case's notices of ``kind``: (step, rung, recipient role, channel, code), in order."""
    with stack.database_engines()["notifications"].connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT g.step, g.rung, g.recipient_role, g.channel, g.code FROM notice_log g "
            "JOIN notices n ON n.id = g.notice_id WHERE g.case_id = :case AND n.kind = :kind ORDER BY g.id"),
            {"case": case_id, "kind": kind})]


def steps(log: list[tuple]) -> list[str]:
    return [line[0] for line in log]


# -- the climb --------------------------------------------------------------------------------

T0 = datetime(2026, 3, 4, 15, 0, tzinfo=timezone.utc)  # a Wednesday, 10:00 in Lima


def test_an_overdue_step_climbs_to_the_supervisor_once_unless_acknowledged_or_done(any_stack, providers,
                                                                                   captured_logs):
    stack, clock = any_stack, Clock(T0)
    start(stack, providers, clock)
    org = stack.organization()
    president = org["president"]["token"]
    lead = person(stack, "case_lead", email=LEAD, phone=LEAD_PHONE)
    supervisor = person(stack, "supervisor", email=SUPERVISOR, phone=SUPERVISOR_PHONE, whatsapp=True,
                        supervises=["CEC"])
    climbing, acknowledged, done = cases = [open_case(stack, org["focal_point"]["token"]) for _ in range(3)]
    refs = {}
    for case in cases:
        lead_case(stack, case, president, lead["id"])
        refs[case["id"]] = step_ref()
        publish(stack.amqp_uri, "step_overdue", organization_id=org["organization"]["id"], case_id=case["id"],
                data={"step_ref": refs[case["id"]], "due_at": T0 - timedelta(hours=1), "responsible": "case_lead"})

    # the case lead by SMS (no WhatsApp opt-in) and e-mail, the president by e-mail (she has no phone)
    for case in cases:
        code = case["survivor_code"]
        wait_until(lambda: mails(stack, LEAD, overdue(code)) and mails(stack, PRESIDENT, overdue(code))
                   and [r for r in providers.of("sms") if code in r.data["Body"]],
                   message="the overdue step's messages")
    sms = {case["id"]: next(r for r in providers.of("sms") if case["survivor_code"] in r.data["Body"])
           for case in cases}
    assert {r.to for r in sms.values()} == {LEAD_PHONE}
    assert [m for m in mails(stack, subject="Paso vencido") if not LINK.search(m.text)] == []  # urgent: a link

    # the link of the second case, opened then tapped on the gateway's page
    token = LINK.search(sms[acknowledged["id"]].data["Body"]).group(1)
    shown = requests.get(f"{stack.url}/a/{token}", timeout=15)
    assert shown.status_code == 200 and f"Caso {acknowledged['survivor_code']}" in shown.text
    tapped = requests.post(f"{stack.url}/a/{token}", timeout=15)
    assert tapped.status_code == 200 and "quedó confirmado" in tapped.text
    # the third case's step is done
    publish(stack.amqp_uri, "step_completed", organization_id=org["organization"]["id"], case_id=done["id"],
            data={"step_ref": refs[done["id"]], "responsible": "case_lead", "completed_by": lead["id"],
                  "completed_at": T0, "outcome": "done"})
    wait_until(lambda: "stopped" in steps(log_of(stack, done["id"], "step_overdue")),
               message="the completed step to stop its climb")
    before = everything(stack, providers)

    clock.advance(WAIT - timedelta(minutes=1))  # not yet
    assert everything(stack, providers) == before

    clock.advance(timedelta(minutes=2))
    code = climbing["survivor_code"]
    wait_until(lambda: mails(stack, SUPERVISOR) and providers.of("whatsapp"), message="the climb to the supervisor")
    clock.advance(WAIT * 2)  # past another wait: the top of the ladder was reached
    emails, requests_made = everything(stack, providers)
    assert (emails, requests_made) == (before[0] + 1, before[1] + 1)
    assert [m.subject for m in mails(stack, SUPERVISOR)] == [f"[Warmi] {overdue(code)}"]
    [whatsapp] = providers.of("whatsapp")
    assert whatsapp.to == SUPERVISOR_PHONE.lstrip("+")
    assert whatsapp.data["template"]["name"] == "warmi_step_overdue_ack"
    assert whatsapp.data["template"]["components"][0]["parameters"][0]["text"] == code

    log = log_of(stack, climbing["id"], "step_overdue")
    assert steps(log) == ["planned", "sent", "sent", "sent", "climbed", "sent", "sent"], log
    assert log[0][:2] == ("planned", "president") and log[4][:2] == ("climbed", "supervisor")
    assert sorted(line[2:4] for line in log if line[0] == "sent") == [
        ("case_lead", "email"), ("case_lead", "sms"), ("president", "email"),
        ("supervisor", "email"), ("supervisor", "whatsapp")]
    assert steps(log_of(stack, acknowledged["id"], "step_overdue")) == ["planned", "sent", "sent", "sent",
                                                                       "acknowledged"]
    assert log_of(stack, done["id"], "step_overdue")[-1] == ("stopped", "president", None, None, "step_done")

    # the case's history, as the president reads it: every step, never a body or an address
    read = stack.get_case(president, climbing["id"])
    assert read.status_code == 200, read.text
    told = read.json()["notifications"]
    assert told["status"] == "delivered"
    assert sorted((d["kind"], d["recipient_role"], d["channel"], d["status"]) for d in told["deliveries"]) == [
        ("case_opened", "president", "email", "sent"),
        ("step_overdue", "case_lead", "email", "sent"), ("step_overdue", "case_lead", "sms", "sent"),
        ("step_overdue", "president", "email", "sent"),
        ("step_overdue", "supervisor", "email", "sent"), ("step_overdue", "supervisor", "whatsapp", "sent"),
    ]
    assert {tuple(sorted(d)) for d in told["deliveries"]} == {
        ("attempts", "channel", "kind", "provider_code", "recipient_role", "sent_at", "status")}
    assert [(h["step"], h["rung"]) for h in told["history"] if h["kind"] == "step_overdue"] == \
        [line[:2] for line in log]
    assert {tuple(sorted(h)) for h in told["history"]} == {
        ("at", "channel", "code", "kind", "recipient_role", "rung", "step")}
    logged = "\n".join(captured_logs)
    for secret in (PRESIDENT, LEAD, SUPERVISOR, LEAD_PHONE, SUPERVISOR_PHONE, SUPERVISOR_PHONE.lstrip("+"),
                   "Paso vencido", "paso vencido", token, supervisor["id"], lead["id"]):
        assert secret not in str(told), secret
    for secret in (PRESIDENT, LEAD, SUPERVISOR, LEAD_PHONE, SUPERVISOR_PHONE.lstrip("+")):
        assert secret not in logged, secret


# -- quiet hours --------------------------------------------------------------------------------

def test_quiet_hours_hold_a_new_case_and_let_a_critical_one_through(any_stack, providers):
    stack = any_stack
    clock = Clock(datetime(2026, 3, 5, 4, 0, tzinfo=timezone.utc))  # 23:00 in Lima: inside 22:00-07:00
    start(stack, providers, clock)
    org = stack.organization()
    president, focal_point = org["president"]["token"], org["focal_point"]["token"]
    person(stack, "supervisor", email=SUPERVISOR, supervises=["CEC"])
    my_settings(stack, president, quiet_hours=QUIET)

    quiet = open_case(stack, focal_point)
    critical = open_case(stack, focal_point)
    risk = edit(stack, "POST", f"/cases/{critical['id']}/risk", president, {"risk_level": "high"})
    assert risk.status_code == 200, risk.text

    # the critical one reaches her at once; the two new cases wait
    wait_until(lambda: mails(stack, PRESIDENT, f"el caso {critical['survivor_code']} requiere"),
               message="the critical e-mail inside her quiet hours")
    for case in (quiet, critical):
        wait_until(lambda: ("held", "president", "president", "email", "quiet_hours")
                   in log_of(stack, case["id"], "case_opened"), message="the new case to be held")
    clock.now = datetime(2026, 3, 5, 11, 59, tzinfo=timezone.utc)  # 06:59 in Lima
    stack.smtp.settled(quiet=1.0)
    assert not mails(stack, PRESIDENT, "Nuevo caso")

    clock.now = datetime(2026, 3, 5, 12, 0, 30, tzinfo=timezone.utc)  # 07:00:30 in Lima
    wait_until(lambda: len(mails(stack, PRESIDENT, "Nuevo caso")) == 2, message="the held e-mails")
    stack.smtp.settled(quiet=1.0)
    assert sorted(m.subject for m in mails(stack, PRESIDENT, "Nuevo caso")) == sorted(
        f"[Warmi] Nuevo caso {case['survivor_code']}" for case in (quiet, critical))
    assert len(mails(stack, PRESIDENT, "requiere")) == 1
    assert steps(log_of(stack, quiet["id"], "case_opened")) == ["planned", "held", "sent"]


# -- the weekly digest --------------------------------------------------------------------------

MONDAY = datetime(2026, 3, 9, 13, 0, 30, tzinfo=timezone.utc)  # 08:00:30 in Lima
DIGEST = "Resumen semanal"


def expected_figures(stack, president: str) -> dict:
    """Her organisation's counts as its cases show them to her now."""
    listed = stack.api("GET", "/cases", president)
    assert listed.status_code == 200, listed.text
    now, figures = datetime.now(timezone.utc), {"open_cases": 0, "due_this_week": 0, "overdue": 0}
    for case in listed.json()["items"]:
        detail = stack.get_case(president, case["id"]).json()
        if detail["status"] == "closed":
            continue
        figures["open_cases"] += 1
        for step in detail["plan"]["steps"]:
            due = datetime.fromisoformat(step["due_at"]) if step["status"] == "open" and step["due_at"] else None
            if due is not None and due < now:
                figures["overdue"] += 1
            elif due is not None and due < now + timedelta(days=7):
                figures["due_this_week"] += 1
    return figures


def digest_text(figures: dict, unacknowledged: int) -> list[str]:
    return [f"- Casos abiertos: {figures['open_cases']}", f"- Pasos que vencen esta semana: {figures['due_this_week']}",
            f"- Pasos vencidos: {figures['overdue']}", f"- Alertas que nadie ha confirmado aún: {unacknowledged}"]


def test_each_president_gets_one_digest_a_week_at_her_hour_with_two_containers(any_stack, providers):
    stack, clock = any_stack, Clock(MONDAY - timedelta(minutes=1))  # 07:59 in Lima
    start(stack, providers, clock, replicas=2)
    cec = stack.organization("CEC")
    smp = stack.organization("SMP")  # her president chooses Wednesday at 18:00
    my_settings(stack, smp["president"]["token"], digest={"weekday": 2, "hour": 18})
    for _ in range(2):
        open_case(stack, cec["focal_point"]["token"])
    open_case(stack, smp["focal_point"]["token"])
    wait_until(lambda: len(mails(stack, subject="Nuevo caso")) == 3, message="the new cases' e-mails")
    figures = expected_figures(stack, cec["president"]["token"])
    assert figures["open_cases"] == 2
    assert not mails(stack, subject=DIGEST)

    clock.now = MONDAY
    wait_until(lambda: mails(stack, subject=DIGEST), message="the Monday digest")
    clock.advance(timedelta(hours=3))  # later that morning, still the digest's day
    stack.smtp.settled(quiet=1.0)
    [digest] = mails(stack, subject=DIGEST)
    assert digest.to == PRESIDENT
    assert all(line in digest.text for line in digest_text(figures, 0)), digest.text  # no urgent alert here
    assert not CASE_CODE.search(digest.text + digest.subject)
    assert f"{PUBLIC_URL}/console/" in digest.text and "/console/cases/" not in digest.text

    clock.advance(timedelta(days=1))  # Tuesday: nothing more
    assert len(stack.smtp.settled(quiet=1.0)) == 4

    clock.now = datetime(2026, 3, 11, 23, 0, 30, tzinfo=timezone.utc)  # Wednesday 18:00:30 in Lima
    wait_until(lambda: mails(stack, SMP_PRESIDENT, DIGEST), message="her own hour's digest")
    stack.smtp.settled(quiet=1.0)
    assert len(mails(stack, subject=DIGEST)) == 2

    clock.now = MONDAY + timedelta(days=7)  # a week on: the next one
    wait_until(lambda: len(mails(stack, PRESIDENT, DIGEST)) == 2, message="next week's digest")
    stack.smtp.settled(quiet=1.0)
    assert sorted(m.to for m in mails(stack, subject=DIGEST)) == [PRESIDENT, PRESIDENT, SMP_PRESIDENT]
    with stack.database_engines()["notifications"].connect() as conn:
        weeks = sorted(tuple(r) for r in conn.execute(text("SELECT week FROM digests")))
    assert weeks == [("2026-W11",), ("2026-W11",), ("2026-W12",)]


def test_the_digest_counts_the_alerts_of_its_week_nobody_acknowledged(stack, providers):
    clock = Clock(MONDAY - timedelta(minutes=1))
    start(stack, providers, clock)
    org = stack.organization()
    president = org["president"]["token"]
    case = open_case(stack, org["focal_point"]["token"])
    risk = edit(stack, "POST", f"/cases/{case['id']}/risk", president, {"risk_level": "high"})
    assert risk.status_code == 200, risk.text
    wait_until(lambda: mails(stack, PRESIDENT, "Urgente"), message="the critical e-mail")

    clock.now = MONDAY
    [digest] = wait_until(lambda: mails(stack, subject=DIGEST), message="the Monday digest")
    assert "- Alertas que nadie ha confirmado aún: 1" in digest.text, digest.text


def test_the_case_lead_is_known_whichever_of_its_events_comes_first(stack, providers, monkeypatch):
    nobody_excluded(monkeypatch)  # the case is published here, not opened through cases
    start(stack, providers, Clock(T0))
    org = stack.organization()
    organization_id, president_id = org["organization"]["id"], org["president"]["id"]
    lead = person(stack, "case_lead", email=LEAD)
    case_id, code = str(uuid.uuid4()), "CEC-2026-0042"

    publish(stack.amqp_uri, "case_lead_assigned", organization_id=organization_id, case_id=case_id,
            data={"case_lead_id": lead["id"], "assigned_by": president_id})
    wait_until(lambda: handled(stack.database_engines()["notifications"], "handle_case_lead_assigned"),
               message="the lead's event to be handled")
    publish(stack.amqp_uri, "case_opened", organization_id=organization_id, case_id=case_id,
            data={"survivor_code": code, "opened_by": org["focal_point"]["id"], "opened_at": T0, "risk_level": None})
    wait_until(lambda: scalar(stack, "SELECT count(*) FROM cases WHERE case_id = :id", id=case_id),
               message="the case to be known")
    publish(stack.amqp_uri, "step_overdue", organization_id=organization_id, case_id=case_id,
            data={"step_ref": step_ref(), "due_at": T0 - timedelta(hours=1), "responsible": "case_lead"})

    wait_until(lambda: mails(stack, PRESIDENT, overdue(code)), message="the president's e-mail")
    stack.smtp.settled(quiet=1.0)
    assert mails(stack, LEAD, overdue(code))


def test_a_critical_alert_heard_before_its_case_still_reaches_the_president(stack, providers, monkeypatch):
    nobody_excluded(monkeypatch)  # the case is published here, not opened through cases
    start(stack, providers, Clock(T0))
    org = stack.organization()
    organization_id, case_id, code = org["organization"]["id"], str(uuid.uuid4()), "CEC-2026-0043"

    from prometheus_client import REGISTRY

    def retries() -> float:
        return REGISTRY.get_sample_value(
            "warmi_event_retries_total", {"service": "notifications", "event_type": "risk_changed"}) or 0

    before = retries()
    publish(stack.amqp_uri, "risk_changed", organization_id=organization_id, case_id=case_id,
            data={"risk_level": "high", "changed_by": org["president"]["id"]})
    # the risk is tried first and waits (retried) until the opening has come
    wait_until(lambda: retries() > before, message="the risk to wait for its case")
    publish(stack.amqp_uri, "case_opened", organization_id=organization_id, case_id=case_id,
            data={"survivor_code": code, "opened_by": org["focal_point"]["id"], "opened_at": T0, "risk_level": None})

    wait_until(lambda: mails(stack, PRESIDENT, f"el caso {code} requiere"), timeout=5, message="the critical alert")
