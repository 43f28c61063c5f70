"""Every default notification rule end to end, over the real broker: the
case's events as the cases service publishes them, the committee's people as
identity announces them, e-mail to a real SMTP server, and SMS (Twilio),
WhatsApp (Cloud API) and a webhook receiver played by a local provider.

The committee: a president with a phone who opted in to WhatsApp; a
supervisor with a phone and no opt-in; a case lead with a phone and no
opt-in, who reads English; a focal point with e-mail only, who opens the
cases; and the focal point the organisation was made with, who has no
contact point at all. Everyone but the case lead reads Spanish.

Each test says exactly who got which message about its own case, on which
channel and in which language. A message counts as a kind in a language only
if it is, to the character, that kind's text in that language with the case's
code, its link, the due time in the organisation's zone and the rung; urgent
and critical messages carry a valid acknowledgement link, normal ones none.
One committee serves the whole file on each database, PostgreSQL and SQLite
(each test has cases of its own, and puts back what it changes); the weekly
digest has tests of its own."""
from __future__ import annotations

import email
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from email.header import decode_header, make_header

import pytest
import requests
from prometheus_client import REGISTRY
from sqlalchemy import text

from contracts.webhook_signature import verify
from services.notifications.adapters.templates import KINDS, Renderer
from services.notifications.domain import acks
from tests.conftest import (
    ACK_KEYS, AMQP_SERVER, DATABASE_SERVICES, RABBIT_API, RABBIT_AUTH, RUN, SmtpServer, Stack, wait_until,
)
from tests.support.notify import nobody_excluded, notifier, publish, step_ref
from tests.support.providers import FakeProviders

PUBLIC_URL = "https://warmi.test.invalid"  # the notifications' PUBLIC_URL in the test stack
ACK_LINK = re.compile(re.escape(PUBLIC_URL) + r"/a/[A-Za-z0-9_-]{32}")
ZONE = "America/Lima"
ACCOUNT, SMS_TOKEN, SMS_FROM = "AC0123456789abcdef0123456789abcdef", "twilio-token", "+15005550006"
PHONE_ID, WA_TOKEN = "106540352242922", "meta-token"
WEBHOOK_SECRET = "whsec-cec-office"
# a step's due time, and the same instant as a message must show it: in Lima's zone
DUE = datetime(2026, 11, 20, 19, 30, tzinfo=timezone.utc)
DUE_IN_LIMA = "2026-11-20 14:30"


@dataclass(frozen=True)
class Person:
    id: str
    email: str | None
    phone: str | None


@dataclass(frozen=True)
class Case:
    id: str
    code: str

    @property
    def link(self) -> str:
        return f"{PUBLIC_URL}/console/cases/{self.id}"


@dataclass(frozen=True, order=True)
class Got:
    """One message as its recipient got it: who, on which channel, which
    kind in which language, and whether it asked to be acknowledged."""

    who: str
    channel: str
    kind: str
    language: str
    ack: bool = False


def exactly(*messages: Got) -> list[Got]:
    return sorted(messages)


class Committee:
    """The organisation CEC and its people, the notifications service
    configured for every channel, and what each event made it send."""

    renderer = Renderer()

    def __init__(self, stack: Stack, providers: FakeProviders):
        self.stack, self.providers = stack, providers
        self.engine = stack.database_engines()["notifications"]
        self.people: dict[str, Person] = {}
        self.cases = 0

    # -- the people --------------------------------------------------------------------
    def found(self) -> None:
        from warmi.admin import create_organization

        made = create_organization(
            code="CEC", name="Cooperativa CEC", timezone_name=ZONE, locale="es", country="PE",
            president_name="Presidenta", president_email="presidenta@cec.test.invalid",
            president_phone="+51900000001", focal_point_name="Punto focal sin contacto",
        )
        self.organization_id = made["organization"]["id"]
        self.stack.expect("notifications", "recipients", "user_id", made["president"]["id"])
        self.stack.expect("notifications", "recipients", "user_id", made["focal_point"]["id"])
        self.people["president"] = Person(made["president"]["id"], "presidenta@cec.test.invalid", "+51900000001")
        self.people["uncontactable_focal_point"] = Person(made["focal_point"]["id"], None, None)
        self.add("supervisor", ["supervisor"], "supervisora@cec.test.invalid", "+51900000002", supervises=["CEC"])
        self.add("case_lead", ["case_lead"], "lead@cec.test.invalid", "+51900000003", locale="en")
        self.add("focal_point", ["focal_point"], "focal@cec.test.invalid", None)
        self.opt_in_to_whatsapp(made["president"]["token"])

    def add(self, name, roles, address, phone, *, locale="es", supervises=()) -> None:
        from warmi.admin import create_user

        made = create_user(org_code="CEC", roles=roles, name=name, email=address, locale=locale,
                           supervises=list(supervises), phone=phone)
        self.stack.expect("notifications", "recipients", "user_id", made["id"])
        self.people[name] = Person(made["id"], address, phone)

    def opt_in_to_whatsapp(self, token: str) -> None:
        """The president opts in herself, in her settings."""
        answer = requests.put(
            f"{self.stack.url}/api/v1/me/notification-settings", timeout=15,
            json={"whatsapp_opt_in": True, "quiet_hours": None, "digest": None, "preferences": {}},
            headers={"Authorization": f"Bearer {token}", "If-Match": '"1"'},
        )
        assert answer.status_code == 200, answer.text
        wait_until(lambda: self.recipient(self.people["president"].id).whatsapp_opt_in == 1,
                   message="the opt-in to reach notifications")

    def recipient(self, user_id: str):
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT * FROM recipients WHERE user_id = :u"), {"u": user_id}).one()

    def who(self, channel: str, address: str) -> str:
        key = "email" if channel == "email" else "phone"
        return next(name for name, p in self.people.items() if getattr(p, key) == address)

    # -- events ------------------------------------------------------------------------
    def tell(self, type_: str, data: dict, case: Case | None = None, *, source: str = "cases") -> list[Got]:
        """Publish an event; once notifications has handled it, what it sent."""
        before = self.sent()
        event = publish(self.stack.amqp_uri, type_, organization_id=self.organization_id,
                        case_id=case.id if case else None, data=data, source=source)
        wait_until(lambda: self.handled(event["event_id"], f"handle_{type_}"), timeout=20,
                   message=f"notifications to handle {type_}")
        after = self.sent()
        return self.read([after[k] for k in after.keys() - before.keys()], case, data)

    def handled(self, event_id: str, handler: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT 1 FROM processed_events WHERE event_id = :e AND handler = :h"),
                                {"e": event_id, "h": handler}).first() is not None

    def open_case(self, *, risk: str | None = None, lead: bool = True,
                  focal_point: str = "focal_point") -> tuple[Case, list[Got]]:
        """A case a focal point opened (and the case lead assigned to it):
        the case, and what its opening sent."""
        self.cases += 1
        case = Case(str(uuid.uuid4()), f"CEC-2026-{self.cases:04d}")
        opened = self.tell("case_opened", {"survivor_code": case.code, "opened_by": self.people[focal_point].id,
                                           "opened_at": datetime.now(timezone.utc), "risk_level": risk}, case)
        if lead:
            assigned = self.tell("case_lead_assigned", {"case_lead_id": self.people["case_lead"].id,
                                                        "assigned_by": self.people["president"].id}, case)
            assert assigned == []
        return case, opened

    def step_event(self, type_: str, case: Case, responsible: str, **more) -> list[Got]:
        return self.tell(type_, {"step_ref": step_ref(), "due_at": DUE, "responsible": responsible, **more}, case)

    def member_changed(self, name: str, **changes) -> None:
        """Identity announces a change of one of the people (a later revision)."""
        from services.identity.service_layer.handlers import member_state
        from warmi.admin import session_for

        person = self.people[name]
        with session_for("identity") as session:
            _, data = member_state(session, person.id)
        revision = self.recipient(person.id).revision + 1
        self.tell("member_changed", {**json.loads(json.dumps(data)), **changes, "revision": revision},
                  source="identity")

    # -- what was sent -----------------------------------------------------------------
    def sent(self) -> dict:
        """Every message so far, by where it was kept: (channel, address, fields)."""
        found = {}
        for path in self.stack.smtp.mail.glob("*.eml"):
            message = email.message_from_bytes(path.read_bytes())
            parts = {p.get_content_type(): p.get_payload(decode=True).decode(p.get_content_charset() or "utf-8")
                     for p in message.walk() if not p.is_multipart()}
            found[path.name] = ("email", message["To"],
                                (subject(message), _lines(parts["text/plain"]), _lines(parts["text/html"])))
        for number, request in enumerate(self.providers.requests):
            if request.channel == "sms":
                found[number] = ("sms", request.data["To"], (request.data["Body"],))
            elif request.channel == "whatsapp":
                template = request.data["template"]
                parameters = tuple(p["text"] for c in template.get("components", []) for p in c["parameters"])
                found[number] = ("whatsapp", "+" + request.data["to"],
                                 (template["name"], template["language"]["code"], parameters))
        return found

    def read(self, messages: list[tuple], case: Case | None, data: dict) -> list[Got]:
        """Each message as a ``Got``: the one kind and language whose text it
        is, for this case, this event's due time and rung."""
        if case is None:
            assert messages == []
            return []
        values = {"case_code": case.code, "link": case.link, "timezone": ZONE, "rung": data.get("rung"),
                  "due_at": DUE_IN_LIMA if "due_at" in data else None}
        found = []
        for channel, address, fields in messages:
            links = {link for field in fields for value in (field if isinstance(field, tuple) else (field,))
                     for link in ACK_LINK.findall(value)}
            assert len(links) <= 1, "one acknowledgement link per message"
            ack_link = links.pop() if links else None
            if ack_link:  # signed by this service, and valid now
                acks.verify(acks.AckKeys.parse(ACK_KEYS), ack_link.rsplit("/", 1)[1], datetime.now(timezone.utc))
            kind, language = self.identify(channel, fields, {**values, "ack_link": ack_link})
            found.append(Got(self.who(channel, address), channel, kind, language, ack_link is not None))
        return sorted(found)

    def identify(self, channel: str, fields: tuple, values: dict) -> tuple[str, str]:
        matches = []
        for kind in KINDS:
            for language in ("es", "en"):
                try:
                    out = self.renderer.render(kind, channel, language, fallback_locale=language, values=values)
                except ValueError:  # a kind that needs values this event does not have
                    continue
                if _fields(out) == fields:
                    matches.append((kind, language))
        assert len(matches) == 1, f"a {channel} message that is not exactly one kind's text: {matches}"
        return matches[0]

    def emails_to(self, name: str, case: Case) -> list:
        return [m for m in self.stack.smtp.messages()
                if m["To"] == self.people[name].email and case.code in subject(m)]

    def requests_about(self, channel: str, case: Case) -> list:
        return [r for r in self.providers.of(channel) if case.code.encode() in r.body]


def subject(message) -> str:
    return str(make_header(decode_header(message["Subject"])))


def _lines(value: str) -> str:
    return value.replace("\r\n", "\n").strip()


def _fields(out) -> tuple:
    if out.channel == "email":
        return out.subject, _lines(out.text), _lines(out.html)
    if out.channel == "sms":
        return (out.text,)
    return out.template, out.language, out.parameters


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def databases(request, backend: str, folder, environment: pytest.MonkeyPatch) -> dict:
    """The run's PostgreSQL databases, emptied, or SQLite files of the
    file's own, migrated (the operators' code in this process follows)."""
    if backend == "postgresql":
        for engine in request.getfixturevalue("engines").values():
            with engine.begin() as conn:
                tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                           "AND tablename <> 'alembic_version'")).scalars().all()
                if tables:
                    conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        return request.getfixturevalue("database_urls")
    from servicekit.migrations import upgrade

    urls = {service: f"sqlite:///{folder / (service + '.db')}" for service in DATABASE_SERVICES}
    for service, url in urls.items():
        environment.setenv(f"{service.upper()}_DATABASE_URL", url)
        upgrade(service, url)
    return urls


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def committee(request, encryption_key, metrics_ports, tmp_path_factory):
    """One stack for the file on each database: a vhost, an SMTP server and
    the fake providers of its own; the gateway (identity) and notifications,
    which takes per-organisation rules from a folder that starts empty and
    is looked at every 0.2 s."""
    backend = request.param
    folder = tmp_path_factory.mktemp(f"rules-{backend}")
    vhost = f"warmi-test-{RUN}-rules-{backend}"
    requests.put(f"{RABBIT_API}/vhosts/{vhost}", auth=RABBIT_AUTH, timeout=10).raise_for_status()
    requests.put(f"{RABBIT_API}/permissions/{vhost}/guest", json={"configure": ".*", "write": ".*", "read": ".*"},
                 auth=RABBIT_AUTH, timeout=10).raise_for_status()
    smtp = SmtpServer(folder / "smtp")
    providers = FakeProviders(account=(ACCOUNT, SMS_TOKEN), whatsapp_token=WA_TOKEN, webhook_secrets=WEBHOOK_SECRET)
    overrides = folder / "organizations"
    overrides.mkdir()
    with pytest.MonkeyPatch.context() as environment:
        nobody_excluded(environment)  # its cases are published here, not opened through cases
        stack = Stack(f"{AMQP_SERVER}/{vhost}", databases(request, backend, folder, environment), smtp,
                      encryption_key, metrics_ports)
        try:
            smtp.wait_ready()
            stack.start("gateway")
            stack.start("notifications", SMS_URL=f"{providers.url}/sms", SMS_ACCOUNT_SID=ACCOUNT,
                        SMS_AUTH_TOKEN=SMS_TOKEN, SMS_FROM=SMS_FROM, WHATSAPP_URL=f"{providers.url}/whatsapp",
                        WHATSAPP_PHONE_NUMBER_ID=PHONE_ID, WHATSAPP_TOKEN=WA_TOKEN, WEBHOOK_SECRET=WEBHOOK_SECRET,
                        NOTIFICATION_RULES_DIR=str(overrides), RULES_RELOAD_SECONDS=0.2)
            made = Committee(stack, providers)
            made.overrides = overrides
            made.found()
            yield made
        finally:
            stack.stop_all()
            providers.close()
            smtp.stop()
            requests.delete(f"{RABBIT_API}/vhosts/{vhost}", auth=RABBIT_AUTH, timeout=30)


# -- the default rules, one by one ------------------------------------------------------

def test_critical_case_opened_reaches_president_on_whatsapp_supervisor_by_sms_and_both_by_email(committee):
    case, opened = committee.open_case(risk="high")

    assert opened == exactly(  # the president's e-mail once: the rule case_opened adds none
        Got("president", "whatsapp", "case_critical", "es", ack=True),
        Got("president", "email", "case_critical", "es", ack=True),
        Got("supervisor", "sms", "case_critical", "es", ack=True),
        Got("supervisor", "email", "case_critical", "es", ack=True),
    )
    [email] = committee.emails_to("president", case)
    assert subject(email) == f"[Warmi] Urgente: el nuevo caso {case.code} requiere su atención ahora"
    [whatsapp] = committee.requests_about("whatsapp", case)
    assert whatsapp.data["to"] == "51900000001"
    assert whatsapp.data["template"]["name"] == "warmi_case_critical_ack"
    assert whatsapp.data["template"]["language"] == {"code": "es"}


def test_risk_high_reaches_president_and_supervisor_as_critical(committee):
    case, opened = committee.open_case()
    assert opened == exactly(Got("president", "email", "case_opened", "es"))
    president = committee.people["president"].id

    raised = committee.tell("risk_changed", {"risk_level": "high", "changed_by": president}, case)
    lowered = committee.tell("risk_changed", {"risk_level": "medium", "changed_by": president}, case)

    assert raised == exactly(
        Got("president", "whatsapp", "risk_high", "es", ack=True),
        Got("president", "email", "risk_high", "es", ack=True),
        Got("supervisor", "sms", "risk_high", "es", ack=True),
        Got("supervisor", "email", "risk_high", "es", ack=True),
    )
    assert lowered == []


def test_case_opened_is_an_email_to_the_president_only(committee):
    case, opened = committee.open_case(risk="low", lead=False)

    assert opened == exactly(Got("president", "email", "case_opened", "es"))
    [email] = committee.emails_to("president", case)
    assert subject(email) == f"[Warmi] Nuevo caso {case.code}"


def test_case_classified_is_an_email_to_the_case_lead_in_her_language(committee):
    case, _ = committee.open_case()

    classified = committee.tell("case_classified", {"classified_by": committee.people["president"].id}, case)

    assert classified == exactly(Got("case_lead", "email", "case_classified", "en"))
    [email] = committee.emails_to("case_lead", case)
    assert subject(email) == f"[Warmi] Case {case.code}: please review its plan"


def test_step_due_soon_reaches_whoever_the_step_is_for_on_the_first_channel_she_has(committee):
    case, _ = committee.open_case()

    focal_points_step = committee.step_event("step_due_soon", case, "focal_point")
    case_leads_step = committee.step_event("step_due_soon", case, "case_lead")

    assert focal_points_step == exactly(Got("focal_point", "email", "step_due_soon", "es"))
    assert case_leads_step == exactly(Got("case_lead", "sms", "step_due_soon", "en"))
    [sms] = committee.requests_about("sms", case)
    assert sms.data["Body"] == f"Warmi: a step of case {case.code} is due at {DUE_IN_LIMA}. {case.link}"


def test_step_overdue_reaches_case_lead_and_president_on_both_chains_asking_for_acknowledgement(committee):
    case, _ = committee.open_case()

    overdue = committee.step_event("step_overdue", case, "case_lead")

    assert overdue == exactly(
        Got("case_lead", "sms", "step_overdue", "en", ack=True),
        Got("case_lead", "email", "step_overdue", "en", ack=True),
        Got("president", "whatsapp", "step_overdue", "es", ack=True),
        Got("president", "email", "step_overdue", "es", ack=True),
    )


def test_step_escalated_reaches_the_rung_it_climbed_to(committee):
    case, _ = committee.open_case()

    to_president = committee.step_event("step_escalated", case, "case_lead", rung="president")
    to_supervisor = committee.step_event("step_escalated", case, "case_lead", rung="supervisor")

    assert to_president == exactly(
        Got("president", "whatsapp", "step_escalated", "es", ack=True),
        Got("president", "email", "step_escalated", "es", ack=True),
    )
    assert to_supervisor == exactly(
        Got("supervisor", "sms", "step_escalated", "es", ack=True),
        Got("supervisor", "email", "step_escalated", "es", ack=True),
    )


def test_closing_and_reopening_are_emails_to_case_lead_and_president(committee):
    case, _ = committee.open_case()
    president = committee.people["president"].id

    closed = committee.tell("case_closed", {"reason": "survivor_agreed", "closed_by": president}, case)
    reopened = committee.tell("case_reopened", {"reason": "new_incident", "reopened_by": president}, case)

    assert closed == exactly(Got("case_lead", "email", "case_closed", "en"),
                             Got("president", "email", "case_closed", "es"))
    assert reopened == exactly(Got("case_lead", "email", "case_reopened", "en"),
                               Got("president", "email", "case_reopened", "es"))



def test_a_case_lead_heard_of_before_the_opening_still_gets_the_case_leads_messages(committee):
    case = Case(str(uuid.uuid4()), "CEC-2026-0900")
    president = committee.people["president"].id
    committee.tell("case_lead_assigned", {"case_lead_id": committee.people["case_lead"].id, "assigned_by": president},
                   case)
    committee.tell("case_opened", {"survivor_code": case.code, "opened_by": committee.people["focal_point"].id,
                                   "opened_at": datetime.now(timezone.utc), "risk_level": None}, case)

    classified = committee.tell("case_classified", {"classified_by": president}, case)

    assert classified == exactly(Got("case_lead", "email", "case_classified", "en"))

# -- an organisation's own rules ---------------------------------------------------------

def test_an_organisations_override_file_adds_a_signed_webhook_to_its_office(committee):
    rules = notifier(committee.stack.containers["notifications"]).rules
    override = committee.overrides / "CEC.yaml"
    written = override.with_suffix(".part")
    written.write_text(
        f"webhook_url: {committee.providers.url}/webhook/cec\n"
        "rules:\n"
        "  - name: closed_to_the_office\n"
        "    event: case_closed\n"
        "    to: [organization]\n"
        "    urgency: normal\n"
        "    channels: [[webhook]]\n"
        "    kind: case_closed\n"
    )
    written.rename(override)  # never read half written
    try:
        wait_until(lambda: rules.current.webhook_url("CEC"), message="the override to be in force")
        case, _ = committee.open_case()
        president = committee.people["president"].id

        closed = committee.tell("case_closed", {"reason": "lost_contact", "closed_by": president}, case)
        reopened = committee.tell("case_reopened", {"reason": "new_incident", "reopened_by": president}, case)
    finally:
        override.unlink()
        wait_until(lambda: rules.current.webhook_url("CEC") is None, message="the override to be gone")

    # the defaults still hold, and the organisation's rule adds its office's webhook for a closing only
    assert closed == exactly(Got("case_lead", "email", "case_closed", "en"),
                             Got("president", "email", "case_closed", "es"))
    assert reopened == exactly(Got("case_lead", "email", "case_reopened", "en"),
                               Got("president", "email", "case_reopened", "es"))
    [hook] = committee.requests_about("webhook", case)
    assert hook.path == "/webhook/cec"
    delivery = verify(WEBHOOK_SECRET, hook.headers, hook.body)
    body = json.loads(hook.body)
    assert delivery == body["id"] and body["id"].endswith(f":{committee.organization_id}:webhook")
    expected = committee.renderer.render("case_closed", "webhook", "es", fallback_locale="es", values={
        "case_code": case.code, "link": case.link, "timezone": ZONE})
    assert (body["kind"], body["case_code"], body["link"], body["text"]) == (
        "case_closed", case.code, case.link, expected.text)


# -- people the rules name who cannot be reached, or read a language without texts ------

def test_a_person_with_no_usable_channel_is_skipped_logged_and_counted_and_the_others_are_served(committee):
    counted = sample("warmi_notification_unreachable_total", kind="step_overdue", reason="no_usable_channel")
    case, _ = committee.open_case(focal_point="uncontactable_focal_point")

    overdue = committee.step_event("step_overdue", case, "focal_point")

    assert overdue == exactly(
        Got("president", "whatsapp", "step_overdue", "es", ack=True),
        Got("president", "email", "step_overdue", "es", ack=True),
    )
    assert sample("warmi_notification_unreachable_total", kind="step_overdue",
                  reason="no_usable_channel") == counted + 1
    with committee.engine.connect() as conn:
        skipped = conn.execute(text(
            "SELECT step, recipient_role, code FROM notice_log WHERE case_id = :case AND step = 'no_channel'"),
            {"case": case.id}).all()
        deliveries = conn.execute(text("SELECT count(*) FROM deliveries WHERE recipient_id = :u"),
                                  {"u": committee.people["uncontactable_focal_point"].id}).scalar()
    assert skipped == [("no_channel", "focal_point", "no_usable_channel")]
    assert deliveries == 0


def test_a_president_whose_language_has_no_texts_gets_spanish_and_the_fallback_is_counted(committee):
    committee.member_changed("president", language="qu")
    try:
        assert committee.recipient(committee.people["president"].id).locale == "qu"
        counted = sample("warmi_notification_template_fallbacks_total", kind="case_opened", locale="qu")

        case, opened = committee.open_case(lead=False)

        assert opened == exactly(Got("president", "email", "case_opened", "es"))
        assert sample("warmi_notification_template_fallbacks_total", kind="case_opened", locale="qu") == counted + 1
    finally:
        committee.member_changed("president", language="es")
    assert committee.recipient(committee.people["president"].id).locale == "es"
