"""A member excluded from a case (a conflict of interest) is never told
about it, over the real services, broker, SMTP server and fake SMS and
WhatsApp providers, on PostgreSQL and on SQLite, with the notifications
service's clock fixed and moved by the test.

Exclusions never travel in events: the notifications service asks the cases
service (as itself, with its service role) who of the organisation's people
and supervisors is excluded before it tells anyone of a case's event, and
before a climb. What holds:

- of two presidents, the one excluded hears nothing more of the case on any
  channel (a critical risk, an overdue step, its climb, the closure), while
  the other president, the case lead and the supervisor hear all of it;
  nothing the service logs or keeps names her, nor says that someone was
  left out;
- while the cases service is stopped the overdue step's event is tried
  again and nobody is told, and the climb waits; once cases is back both go
  out, to the right people only;
- a case opened and an exclusion made while the notifications service was
  away: when it comes back, late, the excluded president is not told even
  of the opening.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.header import decode_header, make_header

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from tests.conftest import wait_until
from tests.support.api import edit
from tests.support.notify import Clock, fix_clock, publish, step_ref
from tests.support.providers import FakeProviders

ACCOUNT, SMS_TOKEN, SMS_FROM = "AC" + "0123456789abcdef" * 2, "twilio-token-of-the-test", "+15005550006"
PHONE_ID, WA_TOKEN = "106540352242922", "meta-token-of-the-test"

PRESIDENT = "presidenta@cec.test.invalid"  # Stack.organization's
EXCLUDED, EXCLUDED_PHONE = "vicepresidenta@cec.test.invalid", "+51987650009"
LEAD, LEAD_PHONE = "lead@cec.test.invalid", "+51987650001"
SUPERVISOR, SUPERVISOR_PHONE = "supervision@cec.test.invalid", "+51987650002"

T0 = datetime(2026, 3, 4, 15, 0, tzinfo=timezone.utc)  # a Wednesday, 10:00 in Lima
WAIT = timedelta(minutes=240)  # the default rule step_overdue's ack_wait_minutes


@pytest.fixture
def providers():
    server = FakeProviders(account=(ACCOUNT, SMS_TOKEN), whatsapp_token=WA_TOKEN)
    yield server
    server.close()


def start(stack, providers: FakeProviders, clock: Clock) -> None:
    """Cases (its deadline sweep held back: the test publishes the step
    events), notifications on the fixed clock with SMS and WhatsApp at the
    fake providers, a one-second wait for the answer on exclusions and
    retries spread over some twenty seconds, and the gateway."""
    stack.start("cases", DEADLINES={"SWEEP_INTERVAL_SECONDS": 3600})
    start_notifications(stack, providers, clock)
    stack.start("gateway")


def start_notifications(stack, providers: FakeProviders, clock: Clock, **more) -> None:
    fix_clock(stack.start(
        "notifications", SMS_URL=f"{providers.url}/sms", SMS_ACCOUNT_SID=ACCOUNT, SMS_AUTH_TOKEN=SMS_TOKEN,
        SMS_FROM=SMS_FROM, WHATSAPP_URL=f"{providers.url}/whatsapp", WHATSAPP_PHONE_NUMBER_ID=PHONE_ID,
        WHATSAPP_TOKEN=WA_TOKEN, WAKE_INTERVAL_SECONDS=0.2, DIGEST_INTERVAL_SECONDS=3600,
        EXCLUSIONS_TIMEOUT_SECONDS=1, EVENT_RETRY={"DELAYS": [0.2, 0.5, 1, 2, 4, 8]}, **more,
    ), clock)


def person(stack, *roles, email, phone, whatsapp, supervises=()) -> dict:
    """A member of CEC with an e-mail address and a phone (and WhatsApp, if ``whatsapp``)."""
    from warmi.admin import create_user

    made = create_user(org_code="CEC", roles=list(roles), name=" / ".join(roles), email=email, locale="es",
                       supervises=list(supervises), phone=phone, whatsapp=whatsapp)
    stack.expect("notifications", "recipients", "user_id", made["id"])
    return made


def scalar(stack, sql: str, **params):
    with stack.database_engines()["notifications"].connect() as conn:
        return conn.execute(text(sql), params).scalar()


def case_with_an_excluded_president(stack, providers, clock) -> dict:
    """CEC with two presidents (the one to be excluded on every channel; the
    other by e-mail), a case lead (SMS, e-mail) and a supervisor (WhatsApp,
    SMS, e-mail); a case with its
    lead, from which the president herself excludes the other president once
    both were told of its opening."""
    start(stack, providers, clock)
    org = stack.organization()
    excluded = person(stack, "president", email=EXCLUDED, phone=EXCLUDED_PHONE, whatsapp=True)
    lead = person(stack, "case_lead", email=LEAD, phone=LEAD_PHONE, whatsapp=False)
    supervisor = person(stack, "supervisor", email=SUPERVISOR, phone=SUPERVISOR_PHONE, whatsapp=True,
                        supervises=["CEC"])
    president = org["president"]["token"]

    opened = stack.post_case(org["focal_point"]["token"], {"age_group": "18-25"})
    assert opened.status_code == 201, opened.text
    case = opened.json()
    wait_until(lambda: len(told(stack, providers, EXCLUDED, EXCLUDED_PHONE)) == 1
               and told(stack, providers, PRESIDENT), message="both presidents to hear of the new case")
    assigned = edit(stack, "POST", f"/cases/{case['id']}/case-lead", president, {"case_lead_id": lead["id"]})
    assert assigned.status_code == 200, assigned.text
    wait_until(lambda: scalar(stack, "SELECT case_lead_id FROM cases WHERE case_id = :id", id=case["id"])
               == lead["id"], message="the notifications service to learn the case lead")
    excluding = edit(stack, "POST", f"/cases/{case['id']}/exclusions", president, {"user_id": excluded["id"]})
    assert excluding.status_code == 200, excluding.text
    return {"org": org, "case": case, "president": president, "excluded": excluded, "lead": lead,
            "supervisor": supervisor}


# -- what arrived ------------------------------------------------------------------------------

ABOUT = (("paso vencido", "step_overdue"), ("urgente: el nuevo caso", "case_critical"),
         ("urgente: nuevo caso", "case_critical"), ("urgente", "risk_high"), ("nuevo caso", "case_opened"),
         ("cerr", "case_closed"))  # the Spanish texts, most particular first


def told(stack, providers, email: str, phone: str | None = None) -> list[tuple[str, str]]:
    """Every message to this person, sorted: (channel, the kind it is about,
    read from the e-mail's subject, the SMS body, the WhatsApp template)."""
    found = [("email", str(make_header(decode_header(m["Subject"])))) for m in stack.smtp.messages()
             if m["To"] == email]
    for r in providers.requests:
        if phone is not None and r.to in (phone, phone.lstrip("+")):
            found.append((r.channel, r.data["template"]["name"] if r.channel == "whatsapp" else r.data["Body"]))
    named = []
    for channel, content in found:
        if channel == "whatsapp":
            named.append((channel, content.removeprefix("warmi_").removesuffix("_ack")))
        else:
            named.append((channel, next((kind for marker, kind in ABOUT if marker in content.lower()), content)))
    return sorted(named)


def retries(event_type: str) -> float:
    return REGISTRY.get_sample_value("warmi_event_retries_total",
                                     {"service": "notifications", "event_type": event_type}) or 0


# -- the tests -----------------------------------------------------------------------------------

def test_an_excluded_president_hears_nothing_more_of_the_case_on_any_channel(any_stack, providers,
                                                                             captured_logs):
    stack = any_stack
    clock = Clock(T0)
    made = case_with_an_excluded_president(stack, providers, clock)
    case, president, excluded = made["case"], made["president"], made["excluded"]
    org_id = made["org"]["organization"]["id"]

    # a critical risk: both presidents and the supervisor, at once, on every channel they have
    risk = edit(stack, "POST", f"/cases/{case['id']}/risk", president, {"risk_level": "high"})
    assert risk.status_code == 200, risk.text
    wait_until(lambda: len(told(stack, providers, SUPERVISOR, SUPERVISOR_PHONE)) == 2
               and len(told(stack, providers, PRESIDENT)) == 2, message="the critical alerts")
    # an overdue step: its case lead and the presidents; unacknowledged, it climbs to the supervisor
    publish(stack.amqp_uri, "step_overdue", organization_id=org_id, case_id=case["id"],
            data={"step_ref": step_ref(), "due_at": T0 - timedelta(hours=1), "responsible": "case_lead"})
    wait_until(lambda: len(told(stack, providers, LEAD, LEAD_PHONE)) == 2
               and len(told(stack, providers, PRESIDENT)) == 3, message="the overdue step's alerts")
    clock.advance(WAIT + timedelta(minutes=1))
    wait_until(lambda: [m for m in told(stack, providers, SUPERVISOR, SUPERVISOR_PHONE) if m[1] == "step_overdue"]
               == [("email", "step_overdue"), ("whatsapp", "step_overdue")], message="the climb to the supervisor")
    # the supervisor closes the high-risk case: its case lead and the presidents hear of it
    closed = edit(stack, "POST", f"/cases/{case['id']}/closure", made["supervisor"]["token"],
                  {"reason": "survivor_agreed"})
    assert closed.status_code == 200, closed.text
    wait_until(lambda: ("email", "case_closed") in told(stack, providers, LEAD, LEAD_PHONE),
               message="the closure's e-mail")
    stack.smtp.settled(quiet=1.0)
    providers.settled(quiet=1.0)

    assert told(stack, providers, EXCLUDED, EXCLUDED_PHONE) == [("email", "case_opened")]  # before
    assert told(stack, providers, PRESIDENT) == [
        ("email", "case_closed"), ("email", "case_opened"), ("email", "risk_high"), ("email", "step_overdue")]
    assert told(stack, providers, LEAD, LEAD_PHONE) == [
        ("email", "case_closed"), ("email", "step_overdue"), ("sms", "step_overdue")]
    assert told(stack, providers, SUPERVISOR, SUPERVISOR_PHONE) == [  # the unacknowledged critical alert by SMS too
        ("email", "risk_high"), ("email", "step_overdue"), ("sms", "risk_high"), ("whatsapp", "risk_high"),
        ("whatsapp", "step_overdue")]

    # nothing kept or logged names her or says that someone was left out
    assert scalar(stack, "SELECT count(*) FROM deliveries d JOIN notices n ON n.id = d.notice_id "
                         "WHERE d.recipient_id = :id AND n.kind <> 'case_opened'", id=excluded["id"]) == 0
    assert scalar(stack, "SELECT count(*) FROM acks WHERE recipient_id = :id", id=excluded["id"]) == 0
    assert scalar(stack, "SELECT count(*) FROM notice_log WHERE step IN ('no_recipient', 'no_channel')") == 0
    logged = "\n".join(captured_logs)
    for secret in (excluded["id"], EXCLUDED, EXCLUDED_PHONE, EXCLUDED_PHONE.lstrip("+")):
        assert secret not in logged, secret


def test_without_cases_the_alert_and_its_climb_wait_and_then_reach_the_right_people(any_stack, providers,
                                                                                     captured_logs):
    stack = any_stack
    clock = Clock(T0)
    made = case_with_an_excluded_president(stack, providers, clock)
    case, org_id = made["case"], made["org"]["organization"]["id"]
    stack.smtp.settled(quiet=1.0)
    before = len(stack.smtp.messages()), len(providers.requests)

    stack.stop("cases")
    tried = retries("step_overdue")
    publish(stack.amqp_uri, "step_overdue", organization_id=org_id, case_id=case["id"],
            data={"step_ref": step_ref(), "due_at": T0 - timedelta(hours=1), "responsible": "case_lead"})
    wait_until(lambda: retries("step_overdue") >= tried + 2, timeout=20, message="the event to be tried again")
    assert (len(stack.smtp.messages()), len(providers.requests)) == before  # nobody told unchecked
    assert scalar(stack, "SELECT count(*) FROM notices WHERE kind = 'step_overdue'") == 0

    stack.start("cases", DEADLINES={"SWEEP_INTERVAL_SECONDS": 3600})
    wait_until(lambda: len(told(stack, providers, LEAD, LEAD_PHONE)) == 2
               and len(told(stack, providers, PRESIDENT)) == 2, timeout=30, message="the overdue step's alerts")

    # the climb waits for cases too
    stack.stop("cases")
    ticks = len([line for line in captured_logs if "exclusions unavailable" in line])
    clock.advance(WAIT + timedelta(minutes=1))
    wait_until(lambda: len([line for line in captured_logs if "exclusions unavailable" in line]) >= ticks + 2,
               message="the timer to ask cases in vain")
    assert told(stack, providers, SUPERVISOR, SUPERVISOR_PHONE) == []
    assert scalar(stack, "SELECT count(*) FROM notice_log WHERE step = 'climbed'") == 0
    stack.start("cases", DEADLINES={"SWEEP_INTERVAL_SECONDS": 3600})
    wait_until(lambda: len(told(stack, providers, SUPERVISOR, SUPERVISOR_PHONE)) == 2, timeout=30,
               message="the climb to the supervisor")
    stack.smtp.settled(quiet=1.0)
    providers.settled(quiet=1.0)

    assert told(stack, providers, EXCLUDED, EXCLUDED_PHONE) == [("email", "case_opened")]
    assert told(stack, providers, PRESIDENT) == [("email", "case_opened"), ("email", "step_overdue")]
    assert told(stack, providers, LEAD, LEAD_PHONE) == [("email", "step_overdue"), ("sms", "step_overdue")]
    assert told(stack, providers, SUPERVISOR, SUPERVISOR_PHONE) == [
        ("email", "step_overdue"), ("whatsapp", "step_overdue")]
    assert scalar(stack, "SELECT count(*) FROM notice_log WHERE step = 'climbed'") == 1
    logged = "\n".join(captured_logs)
    for secret in (made["excluded"]["id"], EXCLUDED, EXCLUDED_PHONE, EXCLUDED_PHONE.lstrip("+")):
        assert secret not in logged, secret


def test_an_opening_heard_of_after_an_exclusion_was_made_is_not_told_to_the_excluded(stack, providers):
    clock = Clock(T0)
    start(stack, providers, clock)
    org = stack.organization()
    excluded = person(stack, "president", email=EXCLUDED, phone=EXCLUDED_PHONE, whatsapp=True)
    stack.stop("notifications")  # away while the case is opened and the exclusion made

    opened = stack.post_case(org["focal_point"]["token"], {"age_group": "18-25"})
    assert opened.status_code == 201, opened.text
    excluding = edit(stack, "POST", f"/cases/{opened.json()['id']}/exclusions", org["president"]["token"],
                     {"user_id": excluded["id"]})
    assert excluding.status_code == 200, excluding.text

    # back later than LATE_OPENING_SECONDS after the opening (0 here, rather than waiting the
    # default 10 s; the waiting opening may be taken before or after the clock is set, which is
    # later still)
    clock.now = datetime.now(timezone.utc) + timedelta(minutes=1)
    start_notifications(stack, providers, clock, LATE_OPENING_SECONDS=0)
    wait_until(lambda: told(stack, providers, PRESIDENT), timeout=30, message="the other president's e-mail")
    stack.smtp.settled(quiet=1.0)
    providers.settled(quiet=1.0)
    assert told(stack, providers, PRESIDENT) == [("email", "case_opened")]
    assert told(stack, providers, EXCLUDED, EXCLUDED_PHONE) == []
    assert scalar(stack, "SELECT count(*) FROM deliveries WHERE recipient_id = :id", id=excluded["id"]) == 0
