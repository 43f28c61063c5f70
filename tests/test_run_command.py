"""The README's run command on this machine: start, open a case, Ctrl-C."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests.conftest import ROOT, free_port, wait_until


def processes_with(marker: str) -> list[int]:
    """PIDs whose environment carries ``marker`` (this test's WARMI_HOME)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def test_run_command_serves_the_walkthrough_and_stops_cleanly_on_ctrl_c(vhost, tmp_path):
    home = tmp_path / "warmi-home"
    ports = {name: free_port() for name in ("GATEWAY", "CASES", "NOTIFICATIONS", "REFERRALS", "SINK")}
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}  # SQLite, as on a laptop
    env.update(
        WARMI_HOME=str(home), AMQP_URI=vhost, GATEWAY_ADDRESS=f"127.0.0.1:{ports['GATEWAY']}",
        CASES_METRICS_ADDRESS=f"127.0.0.1:{ports['CASES']}",
        NOTIFICATIONS_METRICS_ADDRESS=f"127.0.0.1:{ports['NOTIFICATIONS']}",
        REFERRALS_METRICS_ADDRESS=f"127.0.0.1:{ports['REFERRALS']}",
        GATEWAY_METRICS_ADDRESS=f"127.0.0.1:{free_port()}",
        MAIL_SINK_PORT=str(ports["SINK"]),
    )
    env.pop("SMTP_URL", None)
    log = open(tmp_path / "run.log", "wb")
    run = subprocess.Popen(["bash", "scripts/run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    api = f"http://127.0.0.1:{ports['GATEWAY']}/api/v1"
    try:
        def healthy():
            try:
                return requests.get(f"{api}/health", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(healthy, timeout=90, interval=0.3, message="the gateway")
        created = subprocess.run(
            [str(ROOT / ".venv/bin/warmi"), "create-organization", "--code", "CEC", "--name", "CECOMIP",
             "--timezone", "America/Lima", "--president-name", "Nancy", "--president-email", "nancy@example.org",
             "--focal-point-name", "Rosa"],
            cwd=ROOT, env=env, capture_output=True, check=True,
        )
        tokens = json.loads(created.stdout)

        opened = requests.post(
            f"{api}/cases", json={"age_group": "18-25", "narrative": "relato"},
            headers={"Authorization": f"Bearer {tokens['focal_point']['token']}"}, timeout=10,
        )
        assert opened.status_code == 201, opened.text
        sent_at = time.monotonic()
        mails = wait_until(lambda: list((home / "mail").glob("*.eml")), message="the e-mail in the sink")
        print(f"e-mail in the sink {time.monotonic() - sent_at:.3f}s after 201 Created")
        assert opened.json()["survivor_code"] in mails[0].read_text()

        for service in ("CASES", "NOTIFICATIONS", "REFERRALS"):
            metrics = requests.get(f"http://127.0.0.1:{ports[service]}/metrics", timeout=5)
            assert metrics.status_code == 200 and "warmi_" in metrics.text
        cases_metrics = requests.get(f"http://127.0.0.1:{ports['CASES']}/metrics", timeout=5).text
        assert "warmi_outbox_pending_messages" in cases_metrics
        assert 'warmi_notifications_total{' not in cases_metrics  # one process, its own samples
        assert len(processes_with(str(home))) >= 5  # supervisor, four services, the sink
        wait_until(lambda: b"Warmi is running" in (tmp_path / "run.log").read_bytes(), timeout=30,
                   message="the announcement")
        assert requests.get(f"{api}/ready", timeout=5).status_code == 200

        # a service killed outright comes back by itself, and Warmi with it
        (cases_pid,) = [pid for pid in processes_with(str(home)) if command_line(pid)[-2:] == ["serve", "cases"]]
        os.kill(cases_pid, signal.SIGKILL)
        wait_until(lambda: b"cases started again" in (tmp_path / "run.log").read_bytes(), timeout=15,
                   message="the supervisor to start the cases service again")
        wait_until(lambda: requests.get(f"{api}/ready", timeout=5).status_code == 200, timeout=60, interval=0.5,
                   message="the cases service to come back")
        assert [pid for pid in processes_with(str(home)) if command_line(pid)[-2:] == ["serve", "cases"]] != [cases_pid]
        again = requests.post(
            f"{api}/cases", json={"age_group": "18-25", "narrative": "relato"},
            headers={"Authorization": f"Bearer {tokens['focal_point']['token']}"}, timeout=10,
        )
        assert again.status_code == 201
        assert b"cases stopped unexpectedly (killed by SIGKILL)" in (tmp_path / "run.log").read_bytes()

        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        assert run.wait(timeout=40) == 0
        wait_until(lambda: processes_with(str(home)) == [], timeout=5, message="every process to be gone")
        assert not healthy()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        for pid in processes_with(str(home)):
            os.kill(pid, signal.SIGKILL)
        log.close()


def test_the_scripts_check_the_servers_that_the_urls_name():
    cases = {
        "amqp://guest:guest@127.0.0.1:5672/": "127.0.0.1 5672",
        "amqp://warmi:secret@rabbit.example:5673/warmi": "rabbit.example 5673",
        "amqp://warmi@rabbit.example/warmi": "rabbit.example 5672",
        "amqp://u:p@[::1]:5674/v": "::1 5674",
    }
    for url, expected in cases.items():
        found = subprocess.run(["bash", "-c", 'source scripts/lib.sh; url_host_port "$1" 5672', "-", url],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        assert found == expected, url
    postgres = subprocess.run(
        ["bash", "-c", 'source scripts/lib.sh; url_host_port "$1" 5432', "-", "postgresql+psycopg2://u@db:6432/warmi"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert postgres == "db 6432"
    # no database URL naming PostgreSQL: nothing to start or wait for
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    subprocess.run(["bash", "-c", "source scripts/lib.sh; ensure_postgres"], cwd=ROOT, env=env, check=True, timeout=10)


def test_a_service_that_keeps_dying_is_started_again_ever_later_and_soon_again_after_a_good_run(monkeypatch, capsys):
    from warmi import supervisor

    class Dead:
        pid, returncode = 4242, -9

        def poll(self):
            return self.returncode

    child = supervisor.Child("cases", ["serve", "cases"])

    def start():  # a process that dies at once
        child.process, child.started_at, child.restart_at = Dead(), now, None

    monkeypatch.setattr(child, "start", start)
    child.process, child.started_at = Dead(), 0.0
    delays = []
    now = 1.0
    for _ in range(7):
        child.check(now)  # notices the death
        delays.append(child.restart_at - now)
        now = child.restart_at
        child.check(now)  # starts it again, and it dies at once
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    now += supervisor.STABLE_SECONDS  # this time it stayed up a minute
    child.check(now)
    assert child.restart_at - now == 1
    assert "cases stopped unexpectedly (killed by SIGKILL); starting it again in 1s" in capsys.readouterr().err
