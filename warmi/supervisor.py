"""``warmi run``: every service, the gateway and (unless SMTP_URL is set) the
mail sink, each in its own process; Ctrl-C stops them all."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

from servicekit.config import home

STOP_GRACE_SECONDS = 15


def _spawn(args: list[str]) -> subprocess.Popen:
    # own process group: the terminal's Ctrl-C reaches the supervisor only,
    # which then stops each child in order
    return subprocess.Popen([sys.executable, "-m", "warmi.cli", *args], start_new_session=True)


def _wait_ready(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except Exception:
            time.sleep(0.2)
    return False


def run() -> int:
    children: dict[str, subprocess.Popen] = {}
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
        children["mail-sink"] = _spawn(["mail-sink", "--port", port, "--dir", str(sink_dir)])
        os.environ["SMTP_URL"] = f"smtp://127.0.0.1:{port}"  # inherited by the services
    for name in ("cases", "notifications", "referrals", "gateway"):
        children[name] = _spawn(["serve", name])

    gateway = os.environ.get("GATEWAY_ADDRESS", "127.0.0.1:8000")
    if _wait_ready(f"http://{gateway}/api/v1/health", time.monotonic() + 60):
        print(
            f"\nWarmi is running.\n  API:      http://{gateway}/api/v1\n"
            "  metrics:  /metrics on the addresses in services/*/config.yaml (9101-9104 by default)\n"
            + (f"  mail:     {sink_dir}\n" if sink_dir else "")
            + "Press Ctrl-C to stop.\n",
            flush=True,
        )
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"{name} stopped unexpectedly (exit {child.returncode}); stopping Warmi", file=sys.stderr)
                exit_code = 1
                stopping = True
                break
        time.sleep(0.2)

    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in {STOP_GRACE_SECONDS}s; killing it", file=sys.stderr)
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    print("Warmi stopped.", flush=True)
    return exit_code
