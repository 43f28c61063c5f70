"""Notifications under faults, over the real broker and databases, with fake
SMS and WhatsApp providers and a real SMTP server.

An event that comes twice, or whose copy arrives while the first is being
handled, tells each person on each channel once. A provider that fails is
tried again on the same channel for a normal message, and handed over at
once to the next channel of the chain for an urgent one. A provider down for
good sends the event to the dead-letter queue after its retries, and a
replay once it is back sends the message once. Past the organisation's
monthly SMS cap an urgent message goes by e-mail. Bad input (a person no
channel reaches, a provider's refusal, garbage or silence, a rules file that
does not validate) is logged with its reason and counted, everybody else is
still told, and the service goes on.

Each test runs one committee through several events, one after the other:
starting the services is what costs time here."""
from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from kombu import Connection
from prometheus_client import REGISTRY
from sqlalchemy import text

from servicekit.deadletters import handler_queues, list_dead_letters
from servicekit.topology import event_exchange
from services.notifications.service import NotificationsService
from tests.conftest import Stack, wait_until
from tests.support.notify import nobody_excluded, publish, step_ref
from tests.support.providers import FakeProviders, Hang
from warmi import cli
from warmi.providersink import Answer, meta_error

ACCOUNT, AUTH_TOKEN, FROM = "AC0123456789abcdef0123456789abcdef", "twilio-token", "+15005550006"
PHONE_ID, WA_TOKEN = "106540352242922", "meta-token"
PRESIDENT_PHONE, LEAD_PHONE = "+51900000001", "+51900000002"
PRESIDENT_EMAIL, LEAD_EMAIL = "presidenta@cec.test.invalid", "lider@cec.test.invalid"
READ_TIMEOUT = 0.5  # seconds the service waits for a provider's answer, unless a test says otherwise
REFUSAL = meta_error(400, 131026, "Message undeliverable")
# the overrides of the cap test: one SMS a month, and overdue steps told to
# the person responsible by SMS alone
CAPPED_RULES = """\
caps: {sms: 1}
rules:
  - name: step_overdue
    event: step_overdue
    to: [responsible]
    urgency: urgent
    channels: [[sms]]
    ack_wait_minutes: 240
    kind: step_overdue
"""
# what would lift the cap, were it not refused for its urgency (line 6)
BROKEN_RULES = CAPPED_RULES.replace("{sms: 1}", "{sms: 1000}").replace("urgency: urgent", "urgency: loud")


class Providers(FakeProviders):
    """The fake providers, with channels that can be taken down: a channel
    in ``down`` answers 503 to every request until it is taken out."""

    def __init__(self, **checks):
        super().__init__(**checks)
        self.down: set[str] = set()

    def respond(self, received):
        if received.channel in self.down:
            self.program(received.channel, 503)
        return super().respond(received)


@pytest.fixture(autouse=True)
def _cases_known(monkeypatch):
    """The cases here are published, not opened through cases."""
    nobody_excluded(monkeypatch)


@pytest.fixture
def providers():
    server = Providers(account=(ACCOUNT, AUTH_TOKEN), whatsapp_token=WA_TOKEN)
    yield server
    server.close()


@dataclass
class Committee:
    """A cooperative as notifications knows it, with one open case: the
    president (phone without WhatsApp, e-mail), the case lead (phone with
    WhatsApp, e-mail) and the focal point who opened the case (no e-mail,
    no phone)."""

    stack: Stack
    providers: Providers
    organization_id: str
    president_id: str
    lead_id: str
    case_id: str

    @property
    def engine(self):
        return self.stack.database_engines()["notifications"]

    def step(self, type_: str, responsible: str = "case_lead") -> dict:
        """A step event of the case, as the deadline sweep publishes it."""
        return self.publish(type_, {"step_ref": step_ref(), "due_at": datetime.now(timezone.utc) + timedelta(hours=1),
                                    "responsible": responsible})

    def publish(self, type_: str, data: dict) -> dict:
        return publish(self.stack.amqp_uri, type_, organization_id=self.organization_id, case_id=self.case_id,
                       data=data)

    def again(self, envelope: dict) -> None:
        """The very same envelope once more, as a redelivery brings it."""
        with Connection(self.stack.amqp_uri, transport_options={"confirm_publish": True}) as conn:
            conn.Producer().publish(
                json.dumps(envelope).encode(), exchange=event_exchange("cases"), routing_key=envelope["type"],
                content_type="application/json", content_encoding="utf-8", message_id=envelope["event_id"],
                delivery_mode=2, declare=[],
            )

    def handled(self, envelope: dict) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM processed_events WHERE event_id = :e"),
                                {"e": envelope["event_id"]}).scalar() == 1

    def wait_handled(self, envelope: dict, timeout: float = 20.0) -> None:
        """Until the event is marked handled: every message it had to send is sent."""
        wait_until(lambda: self.handled(envelope), timeout=timeout, message=f"{envelope['type']} to be handled")

    def deliveries(self, envelope: dict) -> list[tuple]:
        """(role, channel, status, attempts, provider code) of the event's deliveries."""
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT recipient_role, channel, status, attempts, provider_code FROM deliveries "
                "WHERE event_id = :e ORDER BY recipient_role, channel"), {"e": envelope["event_id"]})]

    def log(self, envelope: dict, role: str) -> list[tuple]:
        """(step, channel, code) of the notice log's lines about one role, in order."""
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT l.step, l.channel, l.code FROM notice_log l JOIN notices n ON n.id = l.notice_id "
                "WHERE n.event_id = :e AND l.recipient_role = :r ORDER BY l.id"),
                {"e": envelope["event_id"], "r": role})]

    def received(self) -> Counter:
        """Messages the providers and the SMTP server got so far, by (channel, person)."""
        people = {PRESIDENT_PHONE: "president", LEAD_PHONE: "lead", PRESIDENT_EMAIL: "president",
                  LEAD_EMAIL: "lead"}
        got: Counter = Counter()
        for request in self.providers.requests:
            number = request.to if request.channel == "sms" else "+" + request.to
            got[(request.channel, people.get(number, "someone else"))] += 1
        for message in self.stack.smtp.messages():
            got[("email", people.get(message["To"], "someone else"))] += 1
        return got

    def since(self, mark: Counter) -> Counter:
        return self.received() - mark

    def settled(self) -> Counter:
        """``received`` once nothing more has arrived for a while: a late repeat would show."""
        self.providers.settled(quiet=0.5)
        self.stack.smtp.settled(quiet=0.5)
        return self.received()

    def alive(self) -> bool:
        return not self.stack.containers["notifications"]._died.ready()


def committee(stack: Stack, providers: Providers, **config) -> Committee:
    """Notifications (SMS and WhatsApp at ``providers``, ``config`` on top)
    and the gateway running; a committee and a case with its lead."""
    from warmi.admin import create_organization, create_user

    settings = dict(SMS_URL=f"{providers.url}/sms", SMS_ACCOUNT_SID=ACCOUNT, SMS_AUTH_TOKEN=AUTH_TOKEN,
                    SMS_FROM=FROM, WHATSAPP_URL=f"{providers.url}/whatsapp", WHATSAPP_PHONE_NUMBER_ID=PHONE_ID,
                    WHATSAPP_TOKEN=WA_TOKEN, HTTP_TIMEOUT_SECONDS={"connect": 1, "read": READ_TIMEOUT})
    stack.start("notifications", **{**settings, **config})
    stack.start("gateway")  # hosts identity, whose events tell notifications who is who
    org = create_organization(
        code="CEC", name="Cooperativa CEC", timezone_name="America/Lima", locale="es", country="PE",
        president_name="Presidenta", president_email=PRESIDENT_EMAIL, president_phone=PRESIDENT_PHONE,
        focal_point_name="Punto focal",
    )
    lead = create_user(org_code="CEC", roles=["case_lead"], name="Lider", locale="es", supervises=[],
                       email=LEAD_EMAIL, phone=LEAD_PHONE, whatsapp=True)
    organization_id, president_id = org["organization"]["id"], org["president"]["id"]
    for person in (president_id, org["focal_point"]["id"], lead["id"]):
        stack.expect("notifications", "recipients", "user_id", person)
    made = Committee(stack, providers, organization_id, president_id, lead["id"], str(uuid.uuid4()))
    opened = made.publish("case_opened", {"survivor_code": "CEC-2026-0001", "opened_by": org["focal_point"]["id"],
                                          "opened_at": datetime.now(timezone.utc), "risk_level": None})
    made.wait_handled(opened)  # before the lead's event: it changes a case notifications knows
    made.wait_handled(made.publish("case_lead_assigned", {"case_lead_id": lead["id"], "assigned_by": president_id}))
    assert made.received() == Counter({("email", "president"): 1})  # the new case
    return made


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def retries(event_type: str) -> float:
    return sample("warmi_event_retries_total", service="notifications", event_type=event_type)


def duplicates(event_type: str) -> float:
    return sample("warmi_event_duplicates_total", service="notifications", event_type=event_type)


def attempts_counted(channel: str, kind: str) -> float:
    return sum(sample("warmi_notifications_total", channel=channel, kind=kind, outcome=outcome)
               for outcome in ("sent", "failed", "rejected", "superseded", "capped", "cancelled"))


def dead_letters(stack: Stack) -> list:
    return list_dead_letters(stack.amqp_uri, handler_queues(NotificationsService))


# an overdue step as the default rules tell it: the lead (WhatsApp, else SMS;
# and e-mail) and the president (SMS; and e-mail)
OVERDUE_TOLD = Counter({("whatsapp", "lead"): 1, ("email", "lead"): 1, ("sms", "president"): 1,
                        ("email", "president"): 1})


# -- exactly once -----------------------------------------------------------------------

def test_an_event_that_comes_again_or_alongside_itself_tells_each_person_on_each_channel_once(any_stack, providers):
    # the copy's retries wait longer in all than the first is held up, which is less than the read timeout
    c = committee(any_stack, providers, EVENT_RETRY={"DELAYS": [0.5, 1.0, 2.0]},
                  HTTP_TIMEOUT_SECONDS={"connect": 1, "read": 10})

    first = c.step("step_overdue")
    c.wait_handled(first)
    seen = duplicates("step_overdue")
    mark = c.received()
    c.again(first)
    wait_until(lambda: duplicates("step_overdue") > seen, message="the repeat to be recognised")
    assert c.since(mark) == Counter()

    providers.program("sms", Hang(1.5))  # the president's SMS of the next event is held up mid-send
    sms_so_far = len(providers.of("sms"))
    second = c.step("step_overdue")
    providers.wait_for(sms_so_far + 1, channel="sms")
    retried = retries("step_overdue")
    c.again(second)  # arrives while the first copy waits for the provider
    wait_until(lambda: retries("step_overdue") > retried, message="the copy to find the deliveries claimed")
    c.wait_handled(second)
    wait_until(lambda: duplicates("step_overdue") > seen + 1, message="the copy to be recognised once done")

    assert [d[2:4] for d in c.deliveries(second)] == [("sent", 1)] * 4
    assert c.settled() == OVERDUE_TOLD + OVERDUE_TOLD + Counter({("email", "president"): 1})
    assert dead_letters(any_stack) == []
    assert c.alive()


# -- a provider that fails, then takes the message ------------------------------------------

def test_a_failing_provider_is_tried_again_for_a_normal_message_and_left_for_the_next_channel_for_an_urgent_one(
        stack, providers):
    c = committee(stack, providers)

    # normal: a due-soon alert for the president, who has no WhatsApp: SMS (else e-mail)
    providers.program("sms", 503, 503, 503)
    before, mark = retries("step_due_soon"), c.received()
    due = c.step("step_due_soon", responsible="president")
    c.wait_handled(due)

    assert c.deliveries(due) == [("president", "sms", "sent", 4, "201")]
    assert c.log(due, "president") == [("failed", "sms", "http-503")] * 3 + [("sent", "sms", "201")]
    assert retries("step_due_soon") - before == 3
    assert c.since(mark) == Counter({("sms", "president"): 4})  # never by e-mail
    tokens = {r.header("I-Twilio-Idempotency-Token") for r in providers.of("sms")}
    assert len(tokens) == 1  # one message, asked for four times under one key

    # urgent: an overdue step; the lead's WhatsApp fails, her SMS goes at once
    providers.program("whatsapp", 503, 503, 503)
    before, mark = retries("step_overdue"), c.received()
    overdue = c.step("step_overdue")
    c.wait_handled(overdue)

    assert c.deliveries(overdue) == [
        ("case_lead", "email", "sent", 1, "250"), ("case_lead", "sms", "sent", 1, "201"),
        ("case_lead", "whatsapp", "superseded", 1, "http-503"),
        ("president", "email", "sent", 1, "250"), ("president", "sms", "sent", 1, "201"),
    ]
    assert c.log(overdue, "case_lead") == [
        ("fallback", "sms", "whatsapp"), ("superseded", "whatsapp", "http-503"), ("sent", "email", "250"),
        ("sent", "sms", "201"),
    ]
    assert retries("step_overdue") == before  # nothing was left to try again
    assert c.since(mark) == OVERDUE_TOLD + Counter({("sms", "lead"): 1})  # WhatsApp asked once, not three times
    assert c.settled() == Counter({("email", "president"): 2, ("sms", "president"): 5, ("whatsapp", "lead"): 1,
                                   ("sms", "lead"): 1, ("email", "lead"): 1})


def test_an_attempt_handed_over_to_the_next_channel_is_counted_as_superseded_not_as_failed(stack, providers):
    c = committee(stack, providers)
    providers.program("whatsapp", 503)
    failed = sample("warmi_notifications_total", channel="whatsapp", kind="step_overdue", outcome="failed")
    superseded = sample("warmi_notifications_total", channel="whatsapp", kind="step_overdue", outcome="superseded")

    overdue = c.step("step_overdue")
    c.wait_handled(overdue)

    assert ("case_lead", "whatsapp", "superseded", 1, "http-503") in c.deliveries(overdue)
    assert (sample("warmi_notifications_total", channel="whatsapp", kind="step_overdue", outcome="superseded")
            - superseded, sample("warmi_notifications_total", channel="whatsapp", kind="step_overdue",
                                 outcome="failed") - failed) == (1, 0)


# -- a provider down for good ------------------------------------------------------------------

def test_a_provider_down_for_good_dead_letters_the_event_and_a_replay_sends_it_once(
        stack, providers, monkeypatch, capsys):
    c = committee(stack, providers)
    providers.down.add("sms")
    dead_before = sample("warmi_event_dead_lettered_total", service="notifications", event_type="step_due_soon")

    due = c.step("step_due_soon", responsible="president")
    [letter] = wait_until(lambda: dead_letters(stack), message="the dead letter")

    assert (letter.message_id, letter.attempts, letter.error) == (due["event_id"], 4, "DeliveryFailed")
    assert sample("warmi_event_dead_lettered_total", service="notifications",
                  event_type="step_due_soon") - dead_before == 1
    assert c.deliveries(due) == [("president", "sms", "failed", 4, "http-503")]
    assert not c.handled(due)
    assert c.received() == Counter({("email", "president"): 1, ("sms", "president"): 4})

    providers.down.discard("sms")
    monkeypatch.setenv("AMQP_URI", stack.amqp_uri)
    assert cli.main(["dead-letters", "replay", "--by", "operadora"]) == 0
    assert capsys.readouterr().out.strip() == "replayed 1 dead letter(s)"
    c.wait_handled(due)

    assert c.deliveries(due) == [("president", "sms", "sent", 5, "201")]
    assert c.log(due, "president")[-1] == ("sent", "sms", "201")
    assert c.settled() == Counter({("email", "president"): 1, ("sms", "president"): 5})  # four refused, one taken
    assert dead_letters(stack) == []


# -- the monthly cap, and rules that do not validate ----------------------------------------------

def test_past_the_sms_cap_an_urgent_message_goes_by_email_and_a_broken_rules_file_leaves_the_rules_in_force(
        stack, providers, tmp_path, captured_logs):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "CEC.yaml").write_text(CAPPED_RULES)
    c = committee(stack, providers, NOTIFICATION_RULES_DIR=str(rules), RULES_RELOAD_SECONDS=0.2)
    capped = sample("warmi_notification_cap_fallbacks_total", organization=c.organization_id, channel="sms")
    refused = sample("warmi_notification_rules_refused_total")

    first = c.step("step_overdue")
    c.wait_handled(first)
    second = c.step("step_overdue")
    c.wait_handled(second)

    assert c.deliveries(first) == [("case_lead", "sms", "sent", 1, "201")]
    assert c.deliveries(second) == [("case_lead", "email", "sent", 1, "250"),
                                    ("case_lead", "sms", "capped", 1, "monthly_cap")]
    assert c.log(second, "case_lead") == [
        ("capped", "sms", "monthly_cap"), ("fallback", "email", "sms"), ("sent", "email", "250")]
    assert sample("warmi_notification_cap_fallbacks_total", organization=c.organization_id,
                  channel="sms") - capped == 1
    assert sample("warmi_notification_spend_messages", organization=c.organization_id, channel="sms") == 1
    assert sample("warmi_notification_spend_cap_messages", organization=c.organization_id, channel="sms") == 1
    assert c.received() == Counter({("email", "president"): 1, ("sms", "lead"): 1, ("email", "lead"): 1})

    # a change that does not validate, dropped in whole while the service runs
    (rules / "CEC.yaml.new").write_text(BROKEN_RULES)
    (rules / "CEC.yaml.new").replace(rules / "CEC.yaml")
    wait_until(lambda: sample("warmi_notification_rules_refused_total") > refused, message="the file to be refused")

    [line] = [json.loads(line) for line in captured_logs if "notification rules refused" in line]
    assert line["level"] == "error"
    assert line["reason"] == f"{rules / 'CEC.yaml'}:6: urgency must be one of normal, urgent, critical"
    third = c.step("step_overdue")  # the rules in force: still one SMS a month, still SMS alone
    c.wait_handled(third)
    assert c.deliveries(third) == [("case_lead", "email", "sent", 1, "250"),
                                   ("case_lead", "sms", "capped", 1, "monthly_cap")]
    assert sample("warmi_notification_cap_fallbacks_total", organization=c.organization_id,
                  channel="sms") - capped == 2
    assert sample("warmi_notification_rules_refused_total") - refused == 1  # once, not at every look
    assert c.settled() == Counter({("email", "president"): 1, ("sms", "lead"): 1, ("email", "lead"): 2})
    assert c.alive()


# -- bad input -----------------------------------------------------------------------------------

def test_bad_input_is_logged_and_counted_and_everybody_else_is_told(stack, providers):
    c = committee(stack, providers)

    # nobody can reach the focal point (no e-mail, no phone): the president is told all the same
    unreachable = sample("warmi_notification_unreachable_total", kind="step_overdue", reason="no_usable_channel")
    mark = c.received()
    overdue = c.step("step_overdue", responsible="focal_point")
    c.wait_handled(overdue)
    assert c.log(overdue, "focal_point") == [("no_channel", None, "no_usable_channel")]
    assert sample("warmi_notification_unreachable_total", kind="step_overdue",
                  reason="no_usable_channel") - unreachable == 1
    assert c.deliveries(overdue) == [("president", "email", "sent", 1, "250"), ("president", "sms", "sent", 1, "201")]
    assert c.since(mark) == Counter({("sms", "president"): 1, ("email", "president"): 1})

    # a refusal of a normal message is not tried again: the next channel takes it
    providers.program("whatsapp", REFUSAL)
    before, counted, mark = retries("step_due_soon"), attempts_counted("whatsapp", "step_due_soon"), c.received()
    rejected = sample("warmi_notifications_total", channel="whatsapp", kind="step_due_soon", outcome="rejected")
    due = c.step("step_due_soon")
    c.wait_handled(due)
    assert c.deliveries(due) == [("case_lead", "sms", "sent", 1, "201"),
                                 ("case_lead", "whatsapp", "rejected", 1, "131026")]
    assert c.log(due, "case_lead") == [("fallback", "sms", "whatsapp"), ("rejected", "whatsapp", "131026"),
                                       ("sent", "sms", "201")]
    assert sample("warmi_notifications_total", channel="whatsapp", kind="step_due_soon",
                  outcome="rejected") - rejected == 1
    assert attempts_counted("whatsapp", "step_due_soon") - counted == 1
    assert retries("step_due_soon") == before
    assert c.since(mark) == Counter({("whatsapp", "lead"): 1, ("sms", "lead"): 1})

    # an urgent message: silence past the read timeout, a refusal, or garbage; each one logged with its
    # code and counted, the lead's SMS goes at once, the president is told, and nothing is tried again
    for answer, status, code in [
        (Hang(READ_TIMEOUT * 2), "superseded", "ReadTimeout"),
        (REFUSAL, "rejected", "131026"),
        (Answer(200, b"<html>proxy error</html>", "text/html"), "superseded", "bad-answer"),
    ]:
        providers.program("whatsapp", answer)
        before, counted, mark = retries("step_overdue"), attempts_counted("whatsapp", "step_overdue"), c.received()
        overdue = c.step("step_overdue")
        c.wait_handled(overdue)
        assert c.deliveries(overdue) == [
            ("case_lead", "email", "sent", 1, "250"), ("case_lead", "sms", "sent", 1, "201"),
            ("case_lead", "whatsapp", status, 1, code),
            ("president", "email", "sent", 1, "250"), ("president", "sms", "sent", 1, "201"),
        ], code
        assert (status, "whatsapp", code) in c.log(overdue, "case_lead")
        assert attempts_counted("whatsapp", "step_overdue") - counted == 1, code
        assert retries("step_overdue") == before, code
        assert c.since(mark) == OVERDUE_TOLD + Counter({("sms", "lead"): 1}), code

    assert dead_letters(stack) == []
    assert c.alive()
    assert c.settled() == Counter({("email", "president"): 5, ("sms", "president"): 4, ("whatsapp", "lead"): 4,
                                   ("sms", "lead"): 4, ("email", "lead"): 3})
