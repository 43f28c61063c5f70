"""No lost events, no double effects (design rule 4), against the real
broker, PostgreSQL and an SMTP server."""
import json

from kombu import Connection
from prometheus_client import REGISTRY
from sqlalchemy import text

from servicekit.deadletters import handler_queues, list_dead_letters
from servicekit.topology import event_exchange
from services.notifications.service import NotificationsService
from tests.conftest import handled, wait_until
from tests.support.tcp_proxy import CuttableProxy
from warmi import cli

CASE = {"age_group": "18-25", "sex": "female"}


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def outbox_rows(engines):
    with engines["cases"].connect() as conn:
        return conn.execute(text("SELECT body, published_at FROM outbox ORDER BY id")).all()


def deliveries(engines):
    with engines["notifications"].connect() as conn:
        return conn.execute(text("SELECT status, attempts FROM deliveries ORDER BY id")).all()


def test_notifications_down_when_the_case_commits_sends_exactly_one_email_after_restart(stack, clean_databases):
    stack.start_all()
    org = stack.organization()
    stack.kill("notifications")

    case = stack.post_case(org["focal_point"]["token"], CASE).json()
    wait_until(lambda: all(r.published_at for r in outbox_rows(clean_databases)) and outbox_rows(clean_databases),
               message="the event to leave the outbox")
    assert stack.smtp.messages() == []

    stack.start("notifications")
    messages = wait_until(lambda: stack.smtp.messages(), message="the e-mail after restart")
    wait_until(lambda: deliveries(clean_databases) and deliveries(clean_databases)[0].status == "sent")
    assert len(stack.smtp.settled()) == 1
    assert case["survivor_code"] in messages[0]["Subject"]


def test_the_same_event_delivered_twice_sends_one_email(stack, clean_databases):
    stack.start_all()
    org = stack.organization()
    stack.post_case(org["focal_point"]["token"], CASE)
    wait_until(lambda: stack.smtp.messages(), message="the first e-mail")
    duplicates_before = sample("warmi_event_duplicates_total", service="notifications", event_type="case_opened")

    body = outbox_rows(clean_databases)[0].body
    with Connection(stack.amqp_uri) as conn:
        producer = conn.Producer()
        producer.publish(
            body.encode(), exchange=event_exchange("cases"),
            routing_key="case_opened", content_type="application/json", content_encoding="utf-8",
        )

    wait_until(
        lambda: sample("warmi_event_duplicates_total", service="notifications", event_type="case_opened") > duplicates_before,
        message="the repeat to be recognised",
    )
    assert len(stack.smtp.settled()) == 1


def test_two_copies_of_an_event_waiting_in_the_queue_send_one_email(stack, clean_databases):
    stack.start_all()
    org = stack.organization()
    stack.stop("notifications")
    stack.post_case(org["focal_point"]["token"], CASE)
    wait_until(lambda: outbox_rows(clean_databases) and outbox_rows(clean_databases)[0].published_at)
    body = outbox_rows(clean_databases)[0].body
    with Connection(stack.amqp_uri) as conn:
        conn.Producer().publish(
            body.encode(), exchange=event_exchange("cases"),
            routing_key="case_opened", content_type="application/json", content_encoding="utf-8",
        )

    stack.start("notifications")  # both copies are handed to workers at once

    wait_until(lambda: stack.smtp.messages(), message="the e-mail")
    wait_until(lambda: all(d.status == "sent" for d in deliveries(clean_databases)))
    wait_until(lambda: handled(clean_databases["notifications"], "handle_case_opened") == 1)
    assert len(stack.smtp.settled()) == 1


def test_smtp_failing_twice_is_retried_with_backoff_then_delivered_once(stack, clean_databases):
    stack.smtp.fail_next(2)
    stack.start_all()
    org = stack.organization()
    retries_before = sample("warmi_event_retries_total", service="notifications", event_type="case_opened")

    stack.post_case(org["focal_point"]["token"], CASE)

    wait_until(lambda: stack.smtp.messages(), message="the e-mail after retries")
    wait_until(lambda: deliveries(clean_databases)[0].status == "sent")
    assert len(stack.smtp.settled()) == 1
    assert deliveries(clean_databases)[0].attempts == 3
    assert sample("warmi_event_retries_total", service="notifications", event_type="case_opened") - retries_before == 2
    assert sample("warmi_notifications_total", channel="email", kind="case_opened", outcome="failed") >= 2


def test_smtp_failing_always_dead_letters_the_event_and_replay_delivers_it(stack, clean_databases, monkeypatch, capsys):
    stack.smtp.fail_always(True)
    stack.start_all()
    org = stack.organization()
    queues = handler_queues(NotificationsService)

    case = stack.post_case(org["focal_point"]["token"], CASE).json()

    letters = wait_until(lambda: list_dead_letters(stack.amqp_uri, queues), message="a dead letter")
    assert len(letters) == 1
    assert letters[0].attempts == 4 and letters[0].error == "DeliveryFailed"
    assert stack.smtp.messages() == []
    assert stack.get_case(org["president"]["token"], case["id"]).json()["notifications"]["status"] == "retrying"

    stack.smtp.fail_always(False)
    monkeypatch.setenv("AMQP_URI", stack.amqp_uri)
    assert cli.main(["dead-letters", "list"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [entry["message_id"] for entry in listed] == [letters[0].message_id]
    assert cli.main(["dead-letters", "replay"]) == 0

    wait_until(lambda: stack.smtp.messages(), message="the e-mail after replay")
    wait_until(lambda: deliveries(clean_databases)[0].status == "sent")
    assert len(stack.smtp.settled()) == 1
    assert list_dead_letters(stack.amqp_uri, queues) == []


def test_a_relay_cut_off_from_the_broker_loses_no_case(stack, clean_databases):
    proxy = CuttableProxy(5672)
    proxied = stack.amqp_uri.replace(":5672/", f":{proxy.port}/")
    try:
        stack.start_all(cases={"OUTBOX": {"AMQP_URI": proxied, "POLL_INTERVAL": 0.2, "MAX_BACKOFF": 0.5}})
        org = stack.organization()
        token = org["focal_point"]["token"]
        stack.post_case(token, CASE)
        wait_until(lambda: len(stack.smtp.messages()) == 1, message="the first e-mail")

        proxy.cut()
        opened = [stack.post_case(token, CASE) for _ in range(5)]
        assert [r.status_code for r in opened] == [201] * 5
        failures = sample("warmi_outbox_publish_failures_total", service="cases")
        wait_until(lambda: sample("warmi_outbox_publish_failures_total", service="cases") > failures,
                   message="the relay to notice the broker is gone")
        assert len([r for r in outbox_rows(clean_databases) if r.published_at is None]) == 5
        assert len(stack.smtp.settled()) == 1

        proxy.restore()
        wait_until(lambda: len(stack.smtp.messages()) == 6, timeout=30, message="every e-mail after the cut")
        subjects = sorted(m["Subject"] for m in stack.smtp.settled())
        for response in opened:
            code = response.json()["survivor_code"]
            assert sum(code in s for s in subjects) == 1
        assert all(r.published_at for r in outbox_rows(clean_databases))
    finally:
        proxy.close()
