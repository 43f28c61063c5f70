"""Survivor data never leaves the case: not in events, logs, metrics, e-mails."""
import json
import re
import uuid
from datetime import datetime, timedelta, timezone

from kombu import Connection, Queue
from prometheus_client import REGISTRY, generate_latest
import requests
from sqlalchemy import text

from servicekit.topology import event_exchange
from services.cases.adapters.crypto import bind
from tests.conftest import wait_until
from tests.support.api import edit

MARKER = "ZQX-survivor-9f3e"


def test_narrative_and_name_appear_nowhere_outside_the_encrypted_record(stack, clean_databases, captured_logs):
    stack.start_all()
    org = stack.organization()
    exchange = event_exchange("cases")
    tap = Queue("test-tap", exchange=exchange, routing_key="#", durable=False, auto_delete=False)
    with Connection(stack.amqp_uri) as conn:
        tap(conn.default_channel).declare()

    response = stack.post_case(
        org["focal_point"]["token"],
        {"age_group": "12-17", "narrative": f"what happened {MARKER}", "survivor_name": f"Name {MARKER}"},
    )
    assert response.status_code == 201
    case = response.json()
    wait_until(lambda: stack.smtp.messages(), message="the e-mail")
    president = org["president"]["token"]
    assert edit(stack, "POST", f"/cases/{case['id']}/steps/R0/completion", president,
                     {"note": f"nota {MARKER}"}).status_code == 200
    assert edit(stack, "POST", f"/cases/{case['id']}/consents", president,
                     {"purpose": "case_management", "given_by": "caregiver", "child_assent": True}).status_code == 201
    shown = stack.get_case(president, case["id"]).json()

    # the president is allowed to read the narrative; everything else must not carry it
    assert MARKER in shown["narrative"]
    assert MARKER in next(s for s in shown["plan"]["steps"] if s["step_id"] == "R0")["note"]
    captured = {"api response to the focal point": response.text, "logs": "\n".join(captured_logs)}
    with Connection(stack.amqp_uri) as conn:
        events = []
        channel = conn.channel()
        while (message := channel.basic_get("test-tap", no_ack=True)) is not None:
            events.append(repr(message.body) + repr(message.properties))
        channel.close()
    assert events, "the tap saw no event"
    captured["events"] = "\n".join(events)
    captured["e-mails"] = "\n".join(p.read_bytes().decode("utf-8", "replace") for p in stack.smtp.mail.glob("*.eml"))
    captured["metrics"] = generate_latest(REGISTRY).decode() + "".join(
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text for port in stack.metrics_ports.values()
    )
    with clean_databases["cases"].connect() as conn:
        captured["outbox"] = str(conn.execute(text("SELECT * FROM outbox")).all())
        captured["raw case row"] = str(conn.execute(text("SELECT * FROM cases")).all())
        captured["audit"] = str(conn.execute(text("SELECT * FROM audit_log")).all())
    for engine_name in ("notifications", "identity"):
        with clean_databases[engine_name].connect() as conn:
            for table in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname='public'")).scalars():
                captured[f"{engine_name}.{table}"] = str(conn.execute(text(f'SELECT * FROM "{table}"')).all())

    leaks = [where for where, content in captured.items() if MARKER in content]
    assert leaks == []
    assert len(captured_logs) > 10  # the logs were really captured
    assert "narrative_enc" not in captured["events"]


# -- what a reader of the broker learns of a plan ------------------------------------

STEP_ID = re.compile(r"\b(?:R\d{1,2}|M\d)\b")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00\Z")
STEP_REF = re.compile(r"[0-9a-f]{16}\Z")
SURVIVOR_CODE = re.compile(r"[A-Z]{2,10}-\d{4}-\d{4,}\Z")
# the codes an event may carry: roles, rungs, purposes, reasons, outcomes, risk, change groups
CODES = {
    "focal_point", "case_lead", "president", "supervisor", "case_management", "referral", "aggregate_reporting",
    "survivor_agreed", "lost_contact", "new_incident", "survivor_request", "safety_concern", "plan_incomplete",
    "other", "done", "declined", "low", "medium", "high", "profile", "incident", "team", "plan",
    "closure_approval",
}
# what would tell the incident type, the survivor's age or that she is a minor
REVEALING = ("incident_type", "rape", "sexual", "age_group", "minor", "child", "caregiver",
             "assent", "mandatory", "medical", "place", "perpetrator", "mine_site", "narrative", "answers", MARKER)
# an age group standing alone, not the month and day of a date (a step due on 2026-12-17)
AGE_GROUPS = re.compile(r"(?<![\d-])(?:12-17|0-11)(?![\d-])")


def _values(value):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _values(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _values(inner)
    else:
        yield value


def test_no_event_names_a_protocol_step_the_type_the_age_or_free_text(stack, clean_databases):
    """A rape of a 15-year-old (R3 and M1 in her plan), every kind of case
    event, and every alert of the deadline sweep for every open step, read
    off the broker: steps travel as references and one role."""
    from sqlalchemy.orm import Session

    from services.cases.adapters.crypto import KeyRing
    from services.cases.adapters.protocols import load as load_protocol
    from services.cases.domain.access import Caller
    from services.cases.service_layer import consents, handlers, plans, queries
    from services.cases.service_layer.unit_of_work import UnitOfWork

    stack.start("cases", DEADLINES={"SWEEP_INTERVAL_SECONDS": 0.2})
    exchange = event_exchange("cases")
    tap = Queue("test-wire-tap", exchange=exchange, routing_key="#", durable=False, auto_delete=False)
    with Connection(stack.amqp_uri) as conn:
        tap(conn.default_channel).declare()

    engine = clean_databases["cases"]
    keyring = KeyRing([stack.key])
    organization = str(uuid.uuid4())
    focal_point = Caller(str(uuid.uuid4()), organization, frozenset({"focal_point"}))
    president = Caller(str(uuid.uuid4()), organization, frozenset({"president"}))
    lead = Caller(str(uuid.uuid4()), organization, frozenset({"case_lead"}))
    supervisor = Caller(str(uuid.uuid4()), str(uuid.uuid4()), frozenset({"supervisor"}), frozenset({organization}))
    provider = str(uuid.uuid4())
    now = datetime.now(timezone.utc)

    def uow(session):
        bind(session, keyring)
        return UnitOfWork(session)

    with Session(engine) as s:
        handlers.register_organization(uow(s), organization_id=organization, code="CEC",
                                       timezone_name="America/Lima")
        uow(s).providers.upsert(provider, organization, "health_post")
        s.commit()
    with Session(engine) as s:
        case = handlers.open_case(uow(s), keyring, focal_point, {
            "age_group": "12-17", "incident_at": now - timedelta(hours=30), "narrative": f"relato {MARKER}",
            "place": "mine_site", "perpetrator_relationship": "supervisor",
            "context_flags": ["workplace_harassment"], "idempotency_key": f"key-{MARKER}"})
    assert case.minor

    def version():
        with Session(engine) as s:
            return uow(s).cases.get(case.id).version

    with Session(engine) as s:
        handlers.classify_case(uow(s), president, case.id, {"answers": {"rape": True}, "version": version()})
    with Session(engine) as s:
        handlers.update_case(uow(s), president, case.id, {"age_group": "0-11", "version": version()})
    with Session(engine) as s:
        handlers.set_risk(uow(s), president, case.id, {"risk_level": "high", "version": version()})
    with Session(engine) as s:
        handlers.assign_case_lead(uow(s), president, case.id, {"case_lead_id": lead.user_id, "version": version()})
    with Session(engine) as s:
        handlers.exclude_user(uow(s), president, case.id, {"user_id": str(uuid.uuid4()), "version": version()})
    with Session(engine) as s:  # the lead excluded: the case has none, and the wire says null
        handlers.exclude_user(uow(s), president, case.id, {"user_id": lead.user_id, "version": version()})
    with Session(engine) as s:
        referral = consents.record_consent(uow(s), president, case.id, {
            "purpose": "referral", "given_by": "caregiver", "child_assent": True, "provider_id": provider,
            "data_shared": ["medical"], "version": version()})
    with Session(engine) as s:
        consents.record_consent(uow(s), president, case.id, {
            "purpose": "case_management", "given_by": "caregiver", "child_assent": True, "version": version()})
    with Session(engine) as s:
        plans.complete_step(uow(s), keyring, focal_point, case.id, "R0",
                            {"note": f"nota {MARKER}", "version": version()})

    with Session(engine) as s:
        plan = {step["step_id"]: step for step in
                queries.case_detail(uow(s), keyring, president, case.id)["plan"]["steps"]}
    assert {"R3", "M1"} <= set(plan), "the plan of a minor's rape has the medical referral and the mandatory report"
    assert all(STEP_REF.match(step["ref"]) for step in plan.values())
    assert len({step["ref"] for step in plan.values()}) == len(plan)

    # the clock moves 100 hours on: every open step falls due soon, overdue, and goes up the ladder
    due = now - timedelta(hours=100)
    with engine.begin() as conn:
        open_refs = set(conn.execute(text(
            "UPDATE plan_steps SET due_at = :due, next_alert_at = :first, alert_stage = 0 "
            "WHERE case_id = :case AND status = 'open' RETURNING ref"),
            {"due": due, "first": due - timedelta(hours=2), "case": case.id}).scalars())
    assert {plan["R3"]["ref"], plan["M1"]["ref"]} <= open_refs

    events = []

    def drained():
        with Connection(stack.amqp_uri) as conn:
            channel = conn.channel()
            while (message := channel.basic_get("test-wire-tap", no_ack=True)) is not None:
                events.append((message.body, repr(message.properties)))
            channel.close()
        escalated = [json.loads(body) for body, _ in events if json.loads(body)["type"] == "step_escalated"]
        return {e["data"]["step_ref"] for e in escalated if e["data"]["rung"] == "supervisor"} >= open_refs

    wait_until(drained, timeout=30, interval=0.2, message="every open step escalated to the supervisor")
    with Session(engine) as s:  # the sweep's alerts have gone: the rest of a case's life
        consents.withdraw_consent(uow(s), president, case.id, referral.id, version=version())
    with Session(engine) as s:
        handlers.close_case(uow(s), supervisor, case.id, {"reason": "survivor_agreed", "version": version()})
    with Session(engine) as s:
        handlers.reopen_case(uow(s), president, case.id, {"reason": "safety_concern", "version": version()})

    def seen(*types):
        drained()
        return {json.loads(body)["type"] for body, _ in events} >= set(types)

    kinds = ("case_opened", "case_classified", "case_updated", "risk_changed", "case_lead_assigned",
             "consent_recorded", "consent_withdrawn", "step_completed", "step_due_soon", "step_overdue",
             "step_escalated", "case_closed", "case_reopened")
    wait_until(lambda: seen(*kinds), timeout=30, interval=0.2, message="every kind of case event")

    step_ids = {rule.id for rule in load_protocol("smp-gbv", 1).steps}
    alerted = {}
    for body, properties in events:
        event = json.loads(body)
        wire = body.decode() if isinstance(body, bytes) else str(body)
        assert not STEP_ID.search(wire + properties), (event["type"], "names a protocol step")
        assert not set(step_ids) & set(_values(event)), event["type"]
        leaked = [word for word in REVEALING if word in wire.lower() or word in properties.lower()]
        leaked += AGE_GROUPS.findall(wire + properties)
        assert leaked == [], (event["type"], leaked)
        for value in _values(event["data"]):  # ids, instants, references and codes: no free text
            assert value is None or isinstance(value, bool) or any(
                pattern.match(str(value)) for pattern in (UUID, INSTANT, STEP_REF, SURVIVOR_CODE)
            ) or value in CODES, (event["type"], "carries something that is not an id, time, reference or code")
        if event["type"].startswith("step_") and event["type"] != "step_completed":
            alerted.setdefault(event["data"]["step_ref"], set()).add(event["data"]["responsible"])
    # the references are the plan's: an authorised reader finds each step; one role each, M1's its first
    assert set(alerted) == open_refs
    assert alerted[plan["M1"]["ref"]] == {"case_lead"}
    assert alerted[plan["R7"]["ref"]] == {"president"}
    reopened = [json.loads(b)["data"] for b, _ in events if json.loads(b)["type"] == "case_reopened"]
    assert reopened == [{"reopened_by": president.user_id, "reason": "safety_concern"}]
    leads = [json.loads(b)["data"]["case_lead_id"] for b, _ in events if json.loads(b)["type"] == "case_lead_assigned"]
    assert leads == [lead.user_id, None]
