"""``warmi run``: every service, the gateway and (unless SMTP_URL is set) the
mail sink, each in its own process.

A process that dies is started again, after 1 s, then 2, 4 ... up to 30 s if
it keeps dying; a process that stayed up a minute starts again after 1 s.
"Warmi is running" is printed once every service answers through the gateway
(``/api/v1/ready``). Ctrl-C stops them all.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

from servicekit.config import home

STOP_GRACE_SECONDS = 15
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
STABLE_SECONDS = 60.0  # up this long, a process counts as healthy again
NOT_READY_WARNING_SECONDS = 60.0
READY_PATH = "/api/v1/ready"


class Child:
    """One supervised process and its restart schedule."""

    def __init__(self, name: str, args: list[str]):
        self.name, self.args = name, args
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.delay = FIRST_RESTART_DELAY
        self.restart_at: float | None = None

    def start(self) -> None:
        # own process group: the terminal's Ctrl-C reaches the supervisor only,
        # which then stops each child in order
        self.process = subprocess.Popen([sys.executable, "-m", "warmi.cli", *self.args], start_new_session=True)
        self.started_at = time.monotonic()
        self.restart_at = None

    def check(self, now: float) -> None:
        """Notice a death and schedule the restart; restart when it is due."""
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            if now - self.started_at >= STABLE_SECONDS:
                self.delay = FIRST_RESTART_DELAY
            print(f"{self.name} stopped unexpectedly ({_exit_text(code)}); starting it again in {self.delay:g}s",
                  file=sys.stderr, flush=True)
            self.process = None
            self.restart_at = now + self.delay
            self.delay = min(self.delay * 2, MAX_RESTART_DELAY)
        elif self.process is None and self.restart_at is not None and now >= self.restart_at:
            self.start()
            print(f"{self.name} started again (pid {self.process.pid})", file=sys.stderr, flush=True)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except Exception:
        return False


def run() -> int:
    children: dict[str, Child] = {}
    stopping = False

    def stop(signum=None, frame=None):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    sink_dir = None
    if not os.environ.get("SMTP_URL"):
        port = os.environ.get("MAIL_SINK_PORT", "8025")
        sink_dir = home() / "mail"
        children["mail-sink"] = Child("mail-sink", ["mail-sink", "--port", port, "--dir", str(sink_dir)])
        os.environ["SMTP_URL"] = f"smtp://127.0.0.1:{port}"  # inherited by the services
    for name in ("cases", "notifications", "referrals", "gateway"):
        children[name] = Child(name, ["serve", name])
    for child in children.values():
        child.start()

    gateway = os.environ.get("GATEWAY_ADDRESS", "127.0.0.1:8000")
    ready_url = f"http://{gateway}{READY_PATH}"
    began = time.monotonic()
    announced = warned = False
    next_ready_check = began
    while not stopping:
        now = time.monotonic()
        for child in children.values():
            child.check(now)
        if not announced and now >= next_ready_check:
            if _ready(ready_url):
                announced = True
                print(
                    f"\nWarmi is running.\n  API:      http://{gateway}/api/v1\n"
                    "  metrics:  /metrics on the addresses in services/*/config.yaml (9101-9104 by default)\n"
                    + (f"  mail:     {sink_dir}\n" if sink_dir else "")
                    + "Press Ctrl-C to stop.\n",
                    flush=True,
                )
            else:
                next_ready_check = time.monotonic() + 0.5
                if not warned and now - began > NOT_READY_WARNING_SECONDS:
                    warned = True
                    print(f"Not every service answers yet ({ready_url}); still waiting. Is RabbitMQ reachable?",
                          file=sys.stderr, flush=True)
        time.sleep(0.2)

    running = [child for child in children.values() if child.process is not None and child.process.poll() is None]
    for child in running:
        child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in running:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{child.name} did not stop in {STOP_GRACE_SECONDS}s; killing it", file=sys.stderr)
            os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait()
    print("Warmi stopped.", flush=True)
    return 0
