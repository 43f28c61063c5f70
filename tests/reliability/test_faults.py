"""Nothing lost, nothing twice, nothing down.

In the spirit of RabbitMQ's Jepsen tests: the four services run as OS
processes, clients open cases through the gateway at a steady pace, the
deadline sweep fires an alert for each new case, and one fault strikes in the
middle: a service killed with SIGKILL and restarted, the broker restarted (or,
with ``--long``, also killed and started again), one service's broker
connection cut and restored, or poison messages in the consumer queues. After a quiet period the checker counts what the databases
and the mail folder hold against what the clients were told.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter
from urllib.parse import urlparse

import eventlet
from sqlalchemy import text

from servicekit.deadletters import handler_queues, list_dead_letters
from tests.reliability import summary
from tests.reliability.checker import judge, observe
from tests.reliability.load import LoadGenerator
from tests.reliability.plan import SERVICE_ENV
from tests.reliability.poison import TARGETS, deliver_poison
from tests.support.processes import SERVICES, ProcessStack
from tests.support.tcp_proxy import CuttableProxy


def every_handler_queue() -> list[str]:
    from warmi.registry import service_class

    return [queue for name in SERVICES for queue in handler_queues(service_class(name))]


def through(proxy: CuttableProxy, amqp_uri: str) -> str:
    url = urlparse(amqp_uri)
    return url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{proxy.port}").geturl()


def test_nothing_lost_nothing_twice_nothing_down(
    fault, database, repetition, plan, request, tmp_path, smtp, encryption_key
):
    kind, _, target = fault.partition("-")  # kill-cases, cut-notifications, broker-restart|crash, poison
    node = vhost_name = None
    if kind == "broker":
        node = request.getfixturevalue("rabbit_node")
        vhost_name = f"faults-{uuid.uuid4().hex[:8]}"
        amqp_uri = node.add_vhost(vhost_name)
    else:
        amqp_uri = request.getfixturevalue("vhost")
    if database == "postgresql":
        urls, engines = request.getfixturevalue("database_urls"), request.getfixturevalue("clean_databases")
    else:
        urls, engines = request.getfixturevalue("sqlite_database_urls"), request.getfixturevalue("sqlite_engines")
    proxy = None
    per_service = {}
    if kind == "cut":
        proxy = CuttableProxy(urlparse(amqp_uri).port or 5672)
        per_service[target] = {"AMQP_URI": through(proxy, amqp_uri)}
    stack = ProcessStack(
        tmp_path / "stack", amqp_uri=amqp_uri, database_urls=urls, smtp_url=smtp.url,
        encryption_key=encryption_key, env=SERVICE_ENV, per_service=per_service,
    )
    try:
        _run(fault, kind, target, database, plan, stack, node, proxy, amqp_uri, engines, smtp)
    finally:
        stack.stop_all()
        if proxy is not None:
            proxy.close()
        if node is not None and node.running:
            node.delete_vhost(vhost_name)


def _run(fault, kind, target, database, plan, stack, node, proxy, amqp_uri, engines, smtp):
    stack.start_all()
    org = stack.organization()
    load = LoadGenerator(
        stack.url, org["focal_point"]["token"], clients=plan.clients, rate=plan.rate,
        duration=plan.duration, patience=plan.patience,
    ).start()

    expected_starts: dict[str, int] = {}
    poison: dict[str, str] = {}
    poisoned_at = None
    for at in plan.injection_times():
        eventlet.sleep(max(0.0, at - load.elapsed()))
        if kind == "kill":
            stack.restart(target, down_seconds=plan.down)
            expected_starts[target] = stack[target].starts
        elif kind == "cut":
            proxy.cut()
            eventlet.sleep(plan.down)
            proxy.restore()
        elif kind == "broker":
            node.restart(down_seconds=plan.down, hard=target == "crash")
        elif fault == "poison":
            poisoned_at = poisoned_at or load.elapsed()
            poison.update(deliver_poison(amqp_uri))
    provider = None
    if poison:
        # a good event behind the poison in the cases service's queue
        provider = stack.provider(org["organization"]["code"])
    load.join()

    def dead_lettered() -> set[str]:
        return {d.message_id for d in list_dead_letters(amqp_uri, list(TARGETS))}

    def provider_projected() -> bool:
        with engines["cases"].connect() as conn:
            return bool(conn.execute(text("SELECT count(*) FROM providers WHERE id = :id"),
                                     {"id": provider["id"]}).scalar())

    # Wait until every case is told and alerted (and the poison parked), or
    # until the time is up; the count below says what is missing either way.
    deadline = time.monotonic() + plan.settle_timeout
    while time.monotonic() < deadline:
        if observe(engines, smtp.mail).settled() and (
            not poison or (set(poison) <= dead_lettered() and provider_projected())
        ):
            break
        eventlet.sleep(0.5)
    eventlet.sleep(plan.quiet)  # room for a late duplicate

    verdict = judge(fault, database, observe(engines, smtp.mail), load.submissions)
    verdict.answers = load.answer_counts()
    verdict.unexpected_answers = load.unexpected_answers()
    letters = list_dead_letters(amqp_uri, every_handler_queue())
    unexpected_letters = Counter(
        f"{d.queue.split('--')[-1]} {d.error or '?'}" for d in letters if d.message_id not in poison
    )
    if unexpected_letters:
        verdict.notes.append(f"dead letters other than the poison: {dict(unexpected_letters)}")
    summary.record(verdict.line())

    problems = []
    if verdict.lost_count or verdict.duplicated_count or verdict.unexpected_answers:
        problems.append(verdict.details())
    if not load.submissions or not any(s.accepted for s in load.submissions):
        problems.append("the load opened no case at all")
    if not sum(verdict.observation.alerts.values()):
        problems.append("the sweep staged no alert during the load")
    if poison:
        missing = set(poison) - {d.message_id for d in letters}
        if missing:
            problems.append(
                "poison not dead-lettered: " + ", ".join(sorted(poison[m] for m in missing))
            )
        if not provider_projected():
            problems.append("the cases service did not project the provider registered after the poison")
        after = [s for s in load.submissions if s.answers and s.answers[0].at > poisoned_at]
        if not any(s.accepted for s in after):
            problems.append("no case was opened after the poison")
    dead = [
        name for name, process in stack.processes.items()
        if not process.running or process.starts != expected_starts.get(name, 1)
    ]
    if dead:
        problems.append("service processes that died (or were not restarted as the test meant):\n"
                        + stack.report(dead))
    assert not problems, f"under {fault} on {database}:\n" + "\n".join(problems)
