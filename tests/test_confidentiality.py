"""Survivor data never leaves the case: not in events, logs, metrics, e-mails."""
from kombu import Connection, Queue
from prometheus_client import REGISTRY, generate_latest
import requests
from sqlalchemy import text

from servicekit.topology import event_exchange
from tests.conftest import wait_until

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
    assert stack.api("POST", f"/cases/{case['id']}/steps/R0/completion", president,
                     {"note": f"nota {MARKER}"}).status_code == 200
    assert stack.api("POST", f"/cases/{case['id']}/consents", president,
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
    for engine_name in ("notifications", "gateway"):
        with clean_databases[engine_name].connect() as conn:
            for table in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname='public'")).scalars():
                captured[f"{engine_name}.{table}"] = str(conn.execute(text(f'SELECT * FROM "{table}"')).all())

    leaks = [where for where, content in captured.items() if MARKER in content]
    assert leaks == []
    assert len(captured_logs) > 10  # the logs were really captured
    assert "narrative_enc" not in captured["events"]
