"""Warmi's services as real OS processes, one ``warmi serve <name>`` each.

A fault test must be able to kill a service with SIGKILL, as the kernel or an
orchestrator would, and see whether the others stand; a service that dies of
its own must show up as a dead process, not as a container quietly stopped
inside the test's own interpreter. Each process writes its stdout and stderr
to a file of the test's (the logs hold ids and error classes only, but they
can be long): a failure shows only the tail of the process that failed.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import eventlet
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
WARMI = ROOT / ".venv" / "bin" / "warmi"
SERVICES = ("cases", "notifications", "referrals", "gateway")
DATABASES = ("cases", "notifications", "referrals", "identity")  # the gateway's process uses identity's

# what the parent's environment may say about where things are; the stack sets
# each of these itself, so a developer's shell cannot point a test elsewhere
_OWNED_SUFFIXES = (
    "DATABASE_URL", "_METRICS_ADDRESS", "_EVENT_RETRY_DELAYS", "_ENCRYPTION_KEYS", "_ENCRYPTION_KEYS_FILE",
)
_OWNED = {"AMQP_URI", "OUTBOX_AMQP_URI", "GATEWAY_ADDRESS", "SMTP_URL", "WARMI_HOME", "LOG_LEVEL",
          "CASES_SWEEP_INTERVAL_SECONDS", "CASES_DUE_SOON_HOURS", "MAIL_FROM", "WARMI_PUBLIC_URL",
          "AUDIT_KEYS", "AUDIT_KEYS_FILE", "CALLER_KEYS", "CALLER_KEYS_FILE", "ACK_KEYS", "ACK_KEYS_FILE"}

STOP_GRACE_SECONDS = 20.0
TAIL_LINES = 25
TAIL_LINE_CHARS = 400


class ServiceProcess:
    """One service's process: started, killed and restarted; its output
    goes to ``<log_dir>/<name>.<n>.log``, n counting the starts."""

    def __init__(self, name: str, log_dir: Path, env: dict[str, str]):
        self.name = name
        self.log_dir = log_dir
        self.env = env
        self.popen: subprocess.Popen | None = None
        self.starts = 0
        self.logs: list[Path] = []

    @property
    def log(self) -> Path | None:
        return self.logs[-1] if self.logs else None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.starts += 1
        path = self.log_dir / f"{self.name}.{self.starts}.log"
        self.logs.append(path)
        with open(path, "wb") as out:
            # own session: a signal meant for the test run never reaches it,
            # and killing it never reaches the test run
            self.popen = subprocess.Popen(
                [str(WARMI), "serve", self.name], cwd=ROOT, env=self.env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no ack; what a crash or an OOM kill does."""
        if self.running:
            os.kill(self.popen.pid, signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=STOP_GRACE_SECONDS)

    def stop(self) -> None:
        """SIGTERM, as an orchestrator stops it; SIGKILL if it does not end."""
        if not self.running:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()

    def describe(self) -> str:
        """Exit status, the last error class the process logged, and the tail
        of its output: enough to say which process died of what."""
        code = self.returncode
        if code is None:
            status = "running"
        elif code < 0:
            status = f"killed by signal {signal.Signals(-code).name}"
        else:
            status = f"exited with code {code}"
        lines = tail(self.log) if self.log else []
        error = last_error(self.log) if self.log else None
        return (
            f"{self.name} (start {self.starts}, pid {self.popen.pid if self.popen else '-'}): {status}"
            f"; last error logged: {error or 'none'}; log {self.log}\n"
            + "\n".join(f"    | {line}" for line in lines)
        )


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line[:TAIL_LINE_CHARS] for line in text.splitlines()[-lines:]]


def last_error(path: Path) -> str | None:
    """The class of the last exception in a log: a JSON line's ``error``
    field, or the last line of a plain traceback (an uncaught one)."""
    found = None
    in_traceback = False
    try:
        text = path.read_text("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("{"):
            in_traceback = False
            try:
                entry = json.loads(stripped)
            except ValueError:
                continue
            if entry.get("error"):
                found = str(entry["error"])
            elif entry.get("level") in ("error", "critical") and entry.get("remote_error"):
                found = str(entry["remote_error"])
            continue
        if line.startswith("Traceback"):
            in_traceback = True
            continue
        if in_traceback and line and not line.startswith((" ", "\t", "During handling", "The above")):
            found = line.split(":", 1)[0]
            in_traceback = False
    return found


def service_queues(name: str) -> list[str]:
    """The queues a service's process consumes from."""
    from nameko.rpc import Rpc

    from servicekit.deadletters import handler_queues
    from warmi.registry import service_class

    cls = service_class(name)
    has_rpc = any(
        isinstance(entrypoint, Rpc)
        for attr in dir(cls)
        for entrypoint in getattr(getattr(cls, attr), "nameko_entrypoints", ())
    )
    return ([f"rpc-{cls.name}"] if has_rpc else []) + handler_queues(cls)


class ProcessStack:
    """The four services as processes, wired to one broker URI, each to its
    own database, the test's SMTP server, and ports of their own.

    ``env`` adds or overrides variables for every process; ``per_service``
    for one (e.g. an ``AMQP_URI`` through a proxy that the test can cut).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        amqp_uri: str,
        database_urls: dict[str, str],
        smtp_url: str,
        encryption_key: str,
        env: dict[str, str] | None = None,
        per_service: dict[str, dict[str, str]] | None = None,
    ):
        from tests.conftest import free_port

        self.workdir = Path(workdir)
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "home").mkdir(exist_ok=True)
        self.metrics_ports = {name: free_port() for name in SERVICES}
        self.gateway_port = free_port()
        self.url = f"http://127.0.0.1:{self.gateway_port}"
        self.amqp_uri = amqp_uri
        self.database_urls = dict(database_urls)
        base = {k: v for k, v in os.environ.items() if k not in _OWNED and not k.endswith(_OWNED_SUFFIXES)}
        base.update(
            AMQP_URI=amqp_uri,
            GATEWAY_ADDRESS=f"127.0.0.1:{self.gateway_port}",
            SMTP_URL=smtp_url,
            MAIL_FROM="Warmi <warmi@test.invalid>",
            WARMI_PUBLIC_URL="https://warmi.test.invalid",
            CASES_ENCRYPTION_KEYS=encryption_key,
            AUDIT_KEYS=os.environ["AUDIT_KEYS"],  # the run's audit key (tests/conftest.py)
            CALLER_KEYS=os.environ["CALLER_KEYS"],  # the run's caller key (tests/conftest.py)
            ACK_KEYS=os.environ["ACK_KEYS"],  # the run's acknowledgement key (tests/conftest.py)
            WARMI_HOME=str(self.workdir / "home"),
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",  # a killed process leaves its last lines in the log
        )
        for name in DATABASES:
            base[f"{name.upper()}_DATABASE_URL"] = self.database_urls[name]
        for name in SERVICES:
            base[f"{name.upper()}_METRICS_ADDRESS"] = f"127.0.0.1:{self.metrics_ports[name]}"
        base.update(env or {})
        per_service = per_service or {}
        self.processes = {
            name: ServiceProcess(name, self.log_dir, {**base, **per_service.get(name, {})}) for name in SERVICES
        }

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.processes[name]

    def metrics_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    # -- life cycle ----------------------------------------------------------------
    def start(self, name: str, timeout: float = 60.0) -> None:
        self.processes[name].start()
        self.wait_ready(name, timeout)

    def start_all(self, timeout: float = 90.0) -> "ProcessStack":
        # side by side: each spends a few seconds of CPU importing
        for process in self.processes.values():
            process.start()
        for name in SERVICES:
            self.wait_ready(name, timeout)
        return self

    def kill(self, name: str) -> None:
        self.processes[name].kill()

    def restart(self, name: str, down_seconds: float = 0.0, timeout: float = 60.0) -> None:
        """SIGKILL, stay down ``down_seconds``, start again and wait until it answers."""
        self.processes[name].kill()
        if down_seconds:
            eventlet.sleep(down_seconds)
        self.start(name, timeout)

    def stop(self, name: str) -> None:
        self.processes[name].stop()

    def stop_all(self) -> None:
        # one SIGTERM each, side by side; a second one would cut nameko's
        # graceful stop short
        for process in self.processes.values():
            if process.running:
                process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in self.processes.values():
            if process.popen is None:
                continue
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()

    # -- readiness ---------------------------------------------------------------------
    def answers(self, name: str) -> bool:
        """Its ``/metrics`` answers, and it consumes: the gateway's health
        answers; a service has a consumer on each of its queues. (``/metrics``
        alone answers before the container's consumers and timers have
        started, and a process told to stop then may hang in nameko's stop.)"""
        try:
            if requests.get(self.metrics_url(name), timeout=1).status_code != 200:
                return False
            if name == "gateway":
                return requests.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False
        return all(count > 0 for count in self.consumer_counts(name).values())

    def consumer_counts(self, name: str) -> dict[str, int]:
        """Consumers on each queue the service consumes from (RPC and event
        handlers), as the broker sees them; -1 for a queue not declared yet."""
        from amqp.exceptions import NotFound
        from kombu import Connection

        counts = {}
        with Connection(self.amqp_uri, connect_timeout=2) as conn:
            for queue in service_queues(name):
                channel = conn.channel()
                try:
                    _, _, consumers = channel.queue_declare(queue, passive=True)
                    counts[queue] = consumers
                except NotFound:
                    counts[queue] = -1
                finally:
                    try:
                        channel.close()
                    except Exception:  # closed by the broker after a passive miss
                        pass
        return counts

    def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        process = self.processes[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process.running:
                raise AssertionError(f"{name} ended before it answered:\n{process.describe()}")
            if self.answers(name):
                return
            eventlet.sleep(0.1)
        raise AssertionError(f"{name} did not answer within {timeout:.0f}s:\n{process.describe()}")

    # -- what a test asserts at the end ----------------------------------------------------
    def dead(self) -> list[str]:
        return [name for name, process in self.processes.items() if not process.running]

    def report(self, names=None) -> str:
        return "\n".join(self.processes[name].describe() for name in (names or SERVICES))

    def assert_running(self, expected_starts: dict[str, int] | None = None) -> None:
        """Every process is up, and each was started as often as the test
        meant (1, or 2 for the one it killed): none died and came back unseen."""
        expected_starts = expected_starts or {}
        wrong = [
            name for name, process in self.processes.items()
            if not process.running or process.starts != expected_starts.get(name, 1)
        ]
        assert not wrong, "service processes not running as started by the test:\n" + self.report(wrong)

    # -- what an operator sets up, in this test's databases ------------------------------------
    def organization(self, code: str = "CEC", timezone: str = "America/Lima") -> dict:
        """An organisation with its president and a focal point, written by the
        operators' code into this stack's databases; returns ids and tokens."""
        from warmi.admin import create_organization

        with self._database_environment():
            made = create_organization(
                code=code, name=f"Cooperativa {code}", timezone_name=timezone, locale="es", country="PE",
                president_name="Presidenta", president_email=f"presidenta@{code.lower()}.test.invalid",
                focal_point_name="Punto focal",
            )
        self.await_projection("cases", "organizations", "id", made["organization"]["id"])
        self.await_projection("notifications", "recipients", "user_id", made["president"]["id"])
        return made

    def await_projection(self, service: str, table: str, column: str, value: str, timeout: float = 30.0) -> None:
        """Identity's events reach the other services through the gateway's
        process (which hosts identity): wait for the row, if both run."""
        from sqlalchemy import create_engine, text

        if not (self.processes["gateway"].running and self.processes[service].running):
            return
        engine = create_engine(self.database_urls[service])
        deadline = time.monotonic() + timeout
        try:
            while True:
                with engine.connect() as conn:
                    if conn.execute(text(f"SELECT 1 FROM {table} WHERE {column} = :v"), {"v": value}).first():
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"{service} did not learn of {value} from identity's events")
                time.sleep(0.1)
        finally:
            engine.dispose()

    def provider(self, org_code: str, name: str = "CEM", kind: str = "cem") -> dict:
        """A provider of the referrals directory; its registration reaches
        the cases service as an event."""
        from warmi.admin import create_provider

        with self._database_environment():
            return create_provider(org_code=org_code, name=name, kind=kind)

    @contextlib.contextmanager
    def _database_environment(self):
        # the operators' code finds each service's database in the environment
        keys = [f"{name.upper()}_DATABASE_URL" for name in DATABASES]
        saved = {key: os.environ.get(key) for key in keys}
        os.environ.update({f"{name.upper()}_DATABASE_URL": url for name, url in self.database_urls.items()})
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def process_stack(tmp_path, vhost, database_urls, clean_databases, smtp, encryption_key):
    """The four services as processes on this test's vhost and the run's
    PostgreSQL databases, stopped at the end. Import it into a test module
    (or a conftest) to use it."""
    made = ProcessStack(
        tmp_path / "stack", amqp_uri=vhost, database_urls=database_urls, smtp_url=smtp.url,
        encryption_key=encryption_key,
    )
    yield made
    made.stop_all()
