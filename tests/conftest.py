"""Fixtures for tests that cross the broker and the databases.

Every run gets its own PostgreSQL databases and every test its own RabbitMQ
vhost; both are removed afterwards. Services run as real nameko containers in
this process (eventlet), e-mail goes to a real SMTP server in a subprocess.
"""
import os
import warnings

# eventlet announces on import that it is in bugfix mode; nameko 2 runs on it
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import eventlet  # noqa: E402
import eventlet.debug  # noqa: E402

eventlet.monkey_patch()  # before anything imports socket or threading
if os.environ.get("WARMI_TEST_LISTENER_STACKS"):
    # a "second simultaneous read" error then shows where the other reader waits
    eventlet.debug.hub_listener_stacks(True)

import email
import logging
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import base64

import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
RUN = uuid.uuid4().hex[:8]
PG_SERVER = os.environ.get("WARMI_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
AMQP_SERVER = os.environ.get("WARMI_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
RABBIT_API = os.environ.get("WARMI_TEST_RABBIT_API", "http://127.0.0.1:15672/api")
RABBIT_AUTH = ("guest", "guest")
DATABASE_SERVICES = ("cases", "notifications", "referrals", "identity")
# the key the gateway signs callers with and the services check (servicekit.callers)
CALLER_KEYS = "test:" + base64.urlsafe_b64encode(b"warmi-tests-caller-key-0123456789ab").decode().rstrip("=")
os.environ.setdefault("CALLER_KEYS", CALLER_KEYS)
# the key acknowledgement links of urgent notifications are signed with
ACK_KEYS = "1:" + base64.urlsafe_b64encode(b"warmi-tests-acknowledgement-key-0123").decode().rstrip("=")
os.environ.setdefault("ACK_KEYS", ACK_KEYS)


_ports_given: set = set()


def free_port() -> int:
    """A port for a server of the test. Chosen below the kernel's ephemeral
    range, so that no outgoing connection can take it before the server binds."""
    import random

    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(200):
        port = random.randrange(20000, max(20001, low - 1))
        if port in _ports_given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise RuntimeError("no free port")


def wait_until(predicate, timeout=15.0, interval=0.05, message="condition"):
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        eventlet.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}")


# -- databases -----------------------------------------------------------------

@pytest.fixture(scope="session")
def database_urls():
    from servicekit.migrations import upgrade

    urls = {svc: f"{PG_SERVER}/warmi_t{RUN}_{svc}" for svc in DATABASE_SERVICES}
    for svc, url in urls.items():
        os.environ[f"{svc.upper()}_DATABASE_URL"] = url
        upgrade(svc, url)
    yield urls
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for url in urls.values():
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def engines(database_urls):
    made = {svc: create_engine(url) for svc, url in database_urls.items()}
    yield made
    for engine in made.values():
        engine.dispose()


@pytest.fixture
def clean_databases(engines):
    for engine in engines.values():
        with engine.begin() as conn:
            tables = [
                r[0]
                for r in conn.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")
                )
            ]
            if tables:
                conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    return engines


def handled(engine, handler: str) -> int:
    """How many events ``handler`` has handled (the inbox of a service)."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM processed_events WHERE handler = :h"), {"h": handler}).scalar()


def table_counts(engine) -> dict:
    """Rows in every table of a database (PostgreSQL or SQLite), to show that
    nothing was written."""
    from sqlalchemy import inspect

    with engine.connect() as conn:
        names = inspect(conn).get_table_names()
        return {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar() for t in sorted(names)}


# -- broker --------------------------------------------------------------------

from tests.support.rabbit_node import rabbit_node  # noqa: E402,F401  (a private node for fault tests)
from tests.reliability.options import pytest_addoption  # noqa: E402,F401  (--long)

_vhosts = iter(range(1, 100000))


@pytest.fixture
def vhost():
    name = f"warmi-test-{RUN}-{next(_vhosts)}"
    requests.put(f"{RABBIT_API}/vhosts/{name}", auth=RABBIT_AUTH, timeout=10).raise_for_status()
    requests.put(
        f"{RABBIT_API}/permissions/{name}/guest",
        json={"configure": ".*", "write": ".*", "read": ".*"},
        auth=RABBIT_AUTH,
        timeout=10,
    ).raise_for_status()
    yield f"{AMQP_SERVER}/{name}"
    requests.delete(f"{RABBIT_API}/vhosts/{name}", auth=RABBIT_AUTH, timeout=30)


# -- mail ----------------------------------------------------------------------

# Longer than the tests' retry delays (0.2-0.4 s), a relay's poll (0.2 s) and a
# redelivery after a lost ack, so a duplicate would have arrived by then.
LATE_DUPLICATE_SECONDS = 2.0


class SmtpServer:
    def __init__(self, folder: Path):
        self.folder = folder
        self.mail = folder / "mail"
        self.mail.mkdir(parents=True)
        self.port = free_port()
        self.url = f"smtp://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.smtp_server", str(self.mail), str(self.port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def wait_ready(self):
        def up():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_until(up, timeout=20, message="the SMTP server")

    def messages(self) -> list:
        return [email.message_from_bytes(p.read_bytes()) for p in sorted(self.mail.glob("*.eml"))]

    def settled(self, quiet: float = LATE_DUPLICATE_SECONDS) -> list:
        """The messages once none has arrived for ``quiet`` seconds: "exactly
        one e-mail" checked on these would see a late duplicate."""
        seen = len(self.messages())
        for _ in range(20):
            eventlet.sleep(quiet)
            now = self.messages()
            if len(now) == seen:
                return now
            seen = len(now)
        raise AssertionError("e-mails kept arriving")

    def fail_next(self, count: int) -> None:
        (self.folder / "fail_next").write_text(str(count))

    def fail_always(self, on: bool) -> None:
        flag = self.folder / "fail_always"
        if on:
            flag.touch()
        elif flag.exists():
            flag.unlink()

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def smtp(tmp_path):
    server = SmtpServer(tmp_path / "smtp")
    server.wait_ready()
    yield server
    server.stop()


# -- services ------------------------------------------------------------------

# the audit trail's key for the run: the services get it in their config, the
# operators' commands and the migrations run here read it from the environment
from servicekit.audit import generate_key as _audit_key  # noqa: E402

AUDIT_KEYS = _audit_key()
os.environ["AUDIT_KEYS"] = AUDIT_KEYS
os.environ.pop("AUDIT_KEYS_FILE", None)


@pytest.fixture(scope="session")
def encryption_key():
    return Fernet.generate_key().decode()


@pytest.fixture(scope="session")
def metrics_ports():
    return {name: free_port() for name in ("cases", "notifications", "referrals", "gateway")}


class Stack:
    """The four services as nameko containers, wired to this test's vhost,
    the run's databases and the test's SMTP server."""

    def __init__(self, amqp_uri, database_urls, smtp, key, metrics_ports):
        self.amqp_uri = amqp_uri
        self.database_urls = database_urls
        self.smtp = smtp
        self.key = key
        self.metrics_ports = metrics_ports
        self.gateway_port = free_port()
        self.url = f"http://127.0.0.1:{self.gateway_port}"
        self.containers = {}

    def config(self, name: str, **overrides) -> dict:
        config = {
            "AMQP_URI": self.amqp_uri,
            # the gateway hosts identity and uses its database
            "DATABASE_URL": self.database_urls.get("identity" if name == "gateway" else name),
            "CALLER_KEYS": CALLER_KEYS,
            "METRICS_ADDRESS": f"127.0.0.1:{self.metrics_ports[name]}",
            "max_workers": 10,
        }
        if name in ("cases", "referrals", "gateway"):
            config["OUTBOX"] = {"POLL_INTERVAL": 0.2, "MAX_BACKOFF": 0.5}
        if name == "cases":
            config.update(ENCRYPTION_KEYS=self.key, AUDIT_KEYS=AUDIT_KEYS,
                          EVENT_RETRY={"DELAYS": [0.2, 0.3, 0.4]})
        if name == "notifications":
            config.update(
                SMTP_URL=self.smtp.url,
                MAIL_FROM="Warmi <warmi@test.invalid>",
                PUBLIC_URL="https://warmi.test.invalid",
                EVENT_RETRY={"DELAYS": [0.2, 0.3, 0.4]},
                ACK_KEYS=ACK_KEYS,
                OUTBOX={"POLL_INTERVAL": 0.2, "MAX_BACKOFF": 0.5},
            )
        if name == "gateway":
            config["WEB_SERVER_ADDRESS"] = f"127.0.0.1:{self.gateway_port}"
        config.update(overrides)
        return config

    def start(self, name: str, **overrides):
        from nameko.containers import ServiceContainer

        from warmi.registry import process_classes

        config = self.config(name, **overrides)
        made = [ServiceContainer(cls, config) for cls in process_classes(name)]
        for container in made:
            container.start()
        self.containers[name] = made[0]
        for extra in made[1:]:  # the gateway's process hosts identity
            self.containers[f"{name}:{extra.service_name}"] = extra
        self.settle()
        return made[0]

    def start_all(self, **per_service):
        for name in ("cases", "notifications", "referrals", "gateway"):
            self.start(name, **per_service.get(name, {}))
        return self

    def kill(self, name: str) -> None:
        for key in [k for k in self.containers if k == name or k.startswith(name + ":")]:
            self.containers.pop(key).kill()

    def stop(self, name: str) -> None:
        for key in [k for k in self.containers if k == name or k.startswith(name + ":")]:
            self.containers.pop(key).stop()

    # -- identity's events reach the projections -----------------------------
    _pending: list

    def _engine(self, service: str):
        engines = self.__dict__.setdefault("_engines", {})
        if service not in engines:
            engines[service] = create_engine(self.database_urls[service])
        return engines[service]

    def database_engines(self) -> dict:
        """An engine on each service's database, for counting what was written."""
        return {service: self._engine(service) for service in DATABASE_SERVICES}

    def expect(self, service: str, table: str, column: str, value: str) -> None:
        """A row that identity's events will put in ``service``'s projection."""
        self.__dict__.setdefault("_pending", []).append((service, table, column, value))
        self.settle()

    def settle(self, timeout: float = 20.0) -> None:
        """Wait until every expected projection row is there, for the
        services that run now (with the gateway, which publishes identity's
        events); the others are waited for when they start."""
        pending = self.__dict__.get("_pending", [])
        if "gateway" not in self.containers:
            return
        for item in [p for p in pending if p[0] in self.containers]:
            service, table, column, value = item

            def arrived():
                with self._engine(service).connect() as conn:
                    return conn.execute(text(f"SELECT 1 FROM {table} WHERE {column} = :v"), {"v": value}).first()

            wait_until(arrived, timeout=timeout, message=f"{table} of {service} to learn {column}")
            pending.remove(item)

    def stop_all(self):
        # each container needs a second or two to drain; stop them side by side
        containers = [self.containers.pop(name) for name in list(self.containers)]
        pool = eventlet.GreenPool()
        for container in containers:
            pool.spawn(container.stop)
        pool.waitall()
        for engine in self.__dict__.pop("_engines", {}).values():
            engine.dispose()

    # -- helpers a committee member's client would use -----------------------
    def organization(self, code="CEC", timezone="America/Lima", locale="es"):
        from warmi.admin import create_organization

        made = create_organization(
            code=code, name=f"Cooperativa {code}", timezone_name=timezone, locale=locale, country="PE",
            president_name="Presidenta", president_email=f"presidenta@{code.lower()}.test.invalid",
            focal_point_name="Punto focal",
        )
        self.expect("cases", "organizations", "id", made["organization"]["id"])
        self.expect("notifications", "recipients", "user_id", made["president"]["id"])
        return made

    def user(self, org_code, *roles, supervises=(), email=None):
        from warmi.admin import create_user

        made = create_user(org_code=org_code, roles=list(roles), name=" / ".join(roles), email=email,
                           locale="es", supervises=list(supervises))
        self.expect("notifications", "recipients", "user_id", made["id"])
        return made

    def user_id(self, token) -> str:
        from services.identity.service_layer import handlers as identity
        from warmi.admin import session_for

        with session_for("identity") as session:
            return identity.token_person(session, token)

    def api(self, method, path, token=None, body=None, **kwargs):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is not None:
            kwargs["json"] = body
        return requests.request(method, f"{self.url}/api/v1{path}", headers=headers, timeout=15, **kwargs)

    def post_case(self, token, body=None, headers=None, **kwargs):
        send = {"Authorization": f"Bearer {token}", **(headers or {})}
        if body is not None and "data" not in kwargs:
            kwargs["json"] = body
        return requests.post(f"{self.url}/api/v1/cases", headers=send, timeout=15, **kwargs)

    def get_case(self, token, case_id):
        return requests.get(
            f"{self.url}/api/v1/cases/{case_id}", headers={"Authorization": f"Bearer {token}"}, timeout=15
        )


@pytest.fixture
def stack(vhost, database_urls, clean_databases, smtp, encryption_key, metrics_ports):
    made = Stack(vhost, database_urls, smtp, encryption_key, metrics_ports)
    yield made
    made.stop_all()


@pytest.fixture
def sqlite_database_urls(tmp_path, monkeypatch):
    """Every service on a SQLite file of this test's own, migrated, as a
    newcomer's ``./scripts/run`` has them; the operators' code follows."""
    from servicekit.migrations import upgrade

    urls = {svc: f"sqlite:///{tmp_path / (svc + '.db')}" for svc in DATABASE_SERVICES}
    for svc, url in urls.items():
        monkeypatch.setenv(f"{svc.upper()}_DATABASE_URL", url)
        upgrade(svc, url)
    return urls


@pytest.fixture
def sqlite_engines(sqlite_database_urls):
    made = {svc: create_engine(url) for svc, url in sqlite_database_urls.items()}
    yield made
    for engine in made.values():
        engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request):
    """Run the test once on each database: where times, locking or
    concurrency could differ, both must hold."""
    return request.param


@pytest.fixture
def backend_engines(request, backend):
    """The run's PostgreSQL databases (emptied) or fresh SQLite files."""
    if backend == "postgresql":
        return request.getfixturevalue("clean_databases")
    return request.getfixturevalue("sqlite_engines")


@pytest.fixture
def any_stack(request, backend, backend_engines, vhost, smtp, encryption_key, metrics_ports):
    """``stack`` on the database of ``backend``; ``any_stack.engines`` reads it."""
    urls = request.getfixturevalue("database_urls" if backend == "postgresql" else "sqlite_database_urls")
    made = Stack(vhost, urls, smtp, encryption_key, metrics_ports)
    made.engines = backend_engines
    yield made
    made.stop_all()


@pytest.fixture
def captured_logs():
    """Every log record of the test, formatted as the services format them."""
    from servicekit.logs import JsonFormatter

    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect(level=logging.DEBUG)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lines
    root.removeHandler(handler)
    root.setLevel(previous)
