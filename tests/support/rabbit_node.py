"""A RabbitMQ node of the test run's own, to stop, restart and kill.

Fault tests take the broker away from under the services; they must never do
that to the machine's node (5672/15672/25672), which every other test and
process shares. This node has its own name, ports, data and log directories,
Erlang cookie (``HOME``), configuration and an empty plugin list, all under
one directory that ``close()`` removes.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import eventlet
import pytest
from eventlet.green import subprocess

SBIN = Path(os.environ.get("WARMI_TEST_RABBIT_SBIN", "/usr/lib/rabbitmq/bin"))


class RabbitNodeError(RuntimeError):
    pass


class RabbitNode:
    """``start()`` boots the node and returns when it accepts connections;
    ``stop()`` stops it gracefully; ``restart(down_seconds)`` stops it, keeps
    it down that long and starts it again (queues, messages and vhosts
    survive, as on a real broker restart); ``kill()`` ends it abruptly."""

    def __init__(self, base_dir: Path | str, user: str = "guest", password: str = "guest"):
        from tests.conftest import free_port

        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.nodename = f"warmi-{uuid.uuid4().hex[:10]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.user = user
        self.password = password
        self.amqp_uri = f"amqp://{user}:{password}@127.0.0.1:{self.port}"
        self.pid_file = self.base_dir / "rabbit.pid"
        self.running = False
        self._write_files()

    # -- set-up ----------------------------------------------------------------
    def _write_files(self) -> None:
        (self.base_dir / "mnesia").mkdir(exist_ok=True)
        (self.base_dir / "log").mkdir(exist_ok=True)
        (self.base_dir / "home").mkdir(exist_ok=True)
        (self.base_dir / "enabled_plugins").write_text("[].\n")
        # our own env file, so /etc/rabbitmq/rabbitmq-env.conf (the machine
        # node's NODENAME) is never read
        (self.base_dir / "rabbitmq-env.conf").write_text("")
        (self.base_dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            # a test machine's disk may be fuller than the default alarm allows
            "disk_free_limit.absolute = 50MB\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )

    def _env(self) -> dict:
        base = self.base_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(base / "home"),  # the Erlang cookie of this node and its CLI only
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _run(self, *args: str, timeout: float = 90.0, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(SBIN / args[0]), *args[1:]],
            env=self._env(), cwd=self.base_dir, capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RabbitNodeError(
                f"{' '.join(args[:3])} failed ({result.returncode}): {result.stderr.strip()[-800:]}"
            )
        return result

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        return self._run("rabbitmqctl", "-n", self.nodename, *args, timeout=timeout).stdout

    # -- life cycle ------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> None:
        if self.running:
            return
        if self.pid_file.exists():
            self.pid_file.unlink()
        self._run("rabbitmq-server", "-detached", timeout=30)
        # `wait` follows the pid file until the node has booted the app
        self._run("rabbitmqctl", "-n", self.nodename, "wait", "--timeout", str(int(timeout)),
                  str(self.pid_file), timeout=timeout + 10)
        self.running = True

    def stop(self) -> None:
        """A graceful stop: clients see their connections closed by the broker."""
        if not self.running:
            return
        self.ctl("stop", str(self.pid_file), timeout=60)
        self.running = False

    def kill(self) -> None:
        """The node's process ends at once (a crash, a lost machine)."""
        if not self.running:
            return
        pid = self.pid()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _alive(pid):
                eventlet.sleep(0.05)
        self.running = False

    def restart(self, down_seconds: float = 3.0, hard: bool = False) -> None:
        """Down for at least ``down_seconds`` (plus stop and boot time)."""
        self.kill() if hard else self.stop()
        eventlet.sleep(down_seconds)
        self.start()

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        try:
            self.stop()
        except Exception:
            self.kill()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- vhosts ----------------------------------------------------------------
    def add_vhost(self, name: str) -> str:
        """A vhost the guest user may use fully; returns its AMQP URI."""
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, self.user, ".*", ".*", ".*")
        return f"{self.amqp_uri}/{name}"

    def delete_vhost(self, name: str) -> None:
        self.ctl("delete_vhost", name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        # a zombie of ours is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="session")
def rabbit_node(tmp_path_factory):
    """A private RabbitMQ node, started once per run and only for the tests
    that ask for it. Tests that restart it should leave it running."""
    node = RabbitNode(tmp_path_factory.mktemp("rabbit"))
    node.start()
    yield node
    node.close()
