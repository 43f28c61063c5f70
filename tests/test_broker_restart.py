"""Standing through faults: the broker restarts while cases are being opened.

The stack runs against a RabbitMQ node of this run's own (``rabbit_node``),
never the machine's. Clients behave as a phone on a poor connection does:
on a 503 or a dropped connection they send the same request again, with the
same ``Idempotency-Key``.
"""
import collections
import itertools
import socket
import time
import uuid

import eventlet
import pytest
import requests
from amqp.exceptions import ConnectionForced, RecoverableConnectionError
from kombu.exceptions import OperationalError as KombuOperationalError
from nameko.exceptions import RemoteError, UnknownService
from sqlalchemy import text
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from contracts.errors import WarmiError
from services.gateway.api import call, endpoint
from tests.conftest import Stack, wait_until

CASE = {"age_group": "18-25", "sex": "female", "narrative": "relato"}
CLIENTS = 8
CASES_PER_CLIENT = 6
# a client gives up after this long, so a stack that stopped answering fails
# the test instead of running into its timeout
CLIENT_SECONDS = 70
# longer than anything that could still send a late copy of an e-mail here:
# the event retries (0.2-0.4 s), the relay's backoff (0.5 s) and a redelivery
# after the consumers reconnect
QUIET_SECONDS = 6


# -- the gateway's answer to each kind of unavailability --------------------------

class Unavailable(WarmiError):
    code = "unavailable"


def _slow():
    eventlet.sleep(5)


def _raise(exc):
    def method(*args):
        raise exc
    return method


UNAVAILABLE = {
    "rpc timeout": lambda: call(_slow, timeout=0.05),
    "unknown service": lambda: call(_raise(UnknownService("cases"))),
    "connection refused": lambda: call(_raise(ConnectionRefusedError(111, "refused"))),
    "connection reset": lambda: call(_raise(ConnectionResetError(104, "reset"))),
    "socket timeout": lambda: call(_raise(socket.timeout("timed out"))),
    "broker closed the connection": lambda: call(_raise(ConnectionForced("shutdown"))),
    "connection already closed": lambda: call(_raise(RecoverableConnectionError("closed"))),
    "kombu gave up connecting": lambda: call(_raise(KombuOperationalError("no broker"))),
    "service says unavailable": lambda: call(_raise(RemoteError("Unavailable", "database away"))),
    "service's database away": lambda: call(_raise(RemoteError("OperationalError", "could not connect"))),
    "registered unavailable error": lambda: call(_raise(Unavailable("later"))),
    "broker lost outside call": _raise(ConnectionForced("shutdown")),
    "gateway's database away": _raise(SQLAlchemyOperationalError("SELECT 1", {}, Exception("down"))),
}


class _Handler:
    @endpoint
    def handle(self, request, action):
        return action()


@pytest.mark.parametrize("kind", sorted(UNAVAILABLE))
def test_every_unavailability_is_a_503_with_retry_after(kind):
    request = Request(EnvironBuilder(method="GET", path="/api/v1/cases").get_environ())
    response = _Handler().handle(request, action=UNAVAILABLE[kind])
    assert response.status_code == 503, kind
    assert response.headers["Retry-After"].isdigit()
    assert response.json["error"]["code"] == "unavailable"


def test_a_service_that_failed_is_still_a_500():
    request = Request(EnvironBuilder(method="GET", path="/api/v1/cases").get_environ())
    response = _Handler().handle(request, action=lambda: call(_raise(RemoteError("KeyError", "x"))))
    assert response.status_code == 500
    assert "Retry-After" not in response.headers


# -- the broker restarts under load -------------------------------------------------

_vhosts = itertools.count(1)


@pytest.fixture
def private_stack(request, backend, backend_engines, rabbit_node, smtp, encryption_key, metrics_ports):
    """The four services on ``backend``, on a vhost of the private node."""
    urls = request.getfixturevalue("database_urls" if backend == "postgresql" else "sqlite_database_urls")
    vhost = f"restart-{uuid.uuid4().hex[:8]}-{next(_vhosts)}"
    made = Stack(rabbit_node.add_vhost(vhost), urls, smtp, encryption_key, metrics_ports)
    made.engines = backend_engines
    yield made
    made.stop_all()
    if rabbit_node.running:
        rabbit_node.delete_vhost(vhost)
    else:
        rabbit_node.start()  # leave it running for the next test


class Client:
    """Opens cases one after another; each is sent again with the same key
    until it is created."""

    def __init__(self, stack: Stack, token: str):
        self.stack, self.token = stack, token
        self.created: dict[str, dict] = {}  # idempotency key -> case
        self.answers = collections.Counter()  # (status, has Retry-After)
        self.dropped = collections.Counter()  # connection errors by class
        self.gave_up = 0

    def open(self, count: int) -> None:
        deadline = time.monotonic() + CLIENT_SECONDS
        for _ in range(count):
            key = f"phone-{uuid.uuid4().hex}"
            while True:
                if time.monotonic() > deadline:
                    self.gave_up += 1
                    return
                try:
                    response = self.stack.post_case(self.token, CASE, headers={"Idempotency-Key": key})
                except requests.RequestException as exc:
                    self.dropped[type(exc).__name__] += 1
                    eventlet.sleep(0.3)
                    continue
                self.answers[(response.status_code, "Retry-After" in response.headers)] += 1
                if response.status_code in (200, 201):
                    self.created[key] = response.json()
                    break
                if response.status_code != 503:
                    break  # an answer no retry mends; the assertions show it
                eventlet.sleep(0.3)
            eventlet.sleep(0.05)


def _survivor_codes_in_mail(smtp) -> collections.Counter:
    return collections.Counter(message["Subject"] for message in smtp.messages())


def test_a_broker_restart_while_cases_are_opened_loses_nothing_and_doubles_nothing(private_stack, rabbit_node):
    stack = private_stack
    stack.start_all()
    org = stack.organization()
    clients = [Client(stack, org["focal_point"]["token"]) for _ in range(CLIENTS)]
    pool = eventlet.GreenPool()
    for client in clients:
        pool.spawn(client.open, CASES_PER_CLIENT)

    total = CLIENTS * CASES_PER_CLIENT
    done = lambda: sum(len(c.created) for c in clients)  # noqa: E731
    wait_until(lambda: done() >= total // 4, timeout=60, message="a quarter of the cases before the restart")
    rabbit_node.restart(down_seconds=3)  # as an operator restarts it
    wait_until(lambda: done() >= total // 2, timeout=60, message="half of the cases before the crash")
    rabbit_node.restart(down_seconds=2, hard=True)  # as a crashed node comes back
    pool.waitall()

    died = [name for name, container in stack.containers.items() if container._died.ready()]
    assert died == [], f"containers died: {died}"
    assert sum(c.gave_up for c in clients) == 0, "clients gave up: the stack stopped answering"

    answers = sum((c.answers for c in clients), collections.Counter())
    dropped = sum((c.dropped for c in clients), collections.Counter())
    errors = {status: n for (status, retry_after), n in answers.items() if status >= 400}
    assert set(errors) <= {503}, f"error answers: {errors}"
    assert answers[(503, False)] == 0, "a 503 without Retry-After"
    assert not dropped, f"connections dropped: {dict(dropped)}"

    created = {key: case for c in clients for key, case in c.created.items()}
    assert len(created) == total
    with stack.engines["cases"].connect() as conn:
        rows = conn.execute(
            text("SELECT idempotency_key, survivor_code FROM cases WHERE organization_id = :org"),
            {"org": org["organization"]["id"]},
        ).all()
    assert len(rows) == total, "every case committed exactly once"
    assert {r.idempotency_key: r.survivor_code for r in rows} == {
        key: case["survivor_code"] for key, case in created.items()
    }

    codes = {case["survivor_code"] for case in created.values()}

    def every_code_mailed():
        subjects = " ".join(_survivor_codes_in_mail(stack.smtp))
        return all(code in subjects for code in codes)

    wait_until(every_code_mailed, timeout=60, message="an e-mail for every case")
    eventlet.sleep(QUIET_SECONDS)
    subjects = list(_survivor_codes_in_mail(stack.smtp).elements())
    per_code = {code: sum(code in subject for subject in subjects) for code in codes}
    assert set(per_code.values()) == {1}, (
        f"e-mails per case: {collections.Counter(per_code.values())}"
    )
    assert len(subjects) == total
    print(f"answers: {dict(answers)}")


def test_retries_of_one_case_sent_at_once_open_it_once(any_stack):
    """A retry can meet the first try still running (its request waited in
    the queue while the broker was away): both get the one case."""
    any_stack.start_all()
    org = any_stack.organization()
    token = org["focal_point"]["token"]
    for attempt in range(3):
        key = f"phone-{uuid.uuid4().hex}"
        pool = eventlet.GreenPool()
        responses = list(pool.imap(
            lambda _: any_stack.post_case(token, CASE, headers={"Idempotency-Key": key}), range(4)
        ))
        assert {r.status_code for r in responses} <= {200, 201}, [r.status_code for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
    with any_stack.engines["cases"].connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM cases")).scalar() == 3
