"""Benchmark (not a test): case intake through a running Warmi, from the HTTP
request that opens a case to the e-mail its president receives.

Start the product with its mail going to this bench's SMTP server (port 2525),
on SQLite:

    SMTP_URL=smtp://127.0.0.1:2525 WARMI_HOME=/tmp/warmi-bench ./scripts/run

or on PostgreSQL (``warmi run`` creates the databases warmi_bench_cases,
warmi_bench_notifications, warmi_bench_referrals and warmi_bench_identity):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/warmi_bench SMTP_URL=smtp://127.0.0.1:2525 \\
        WARMI_HOME=/tmp/warmi-bench ./scripts/run

then, once it says "Warmi is running", in another terminal with the same
WARMI_HOME (and DATABASE_URL), since the bench creates its organisations with
the operators' CLI:

    WARMI_HOME=/tmp/warmi-bench .venv/bin/python bench/intake.py [--json out.json]
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/warmi_bench WARMI_HOME=/tmp/warmi-bench \\
        .venv/bin/python bench/intake.py [--json out.json]

With other ports (GATEWAY_ADDRESS, CASES_METRICS_ADDRESS ... in the product's
environment), pass --gateway, --metrics and --smtp-port to match.

Afterwards stop the product (Ctrl-C), remove /tmp/warmi-bench and, on
PostgreSQL, drop the four databases:

    for s in cases notifications referrals identity; do dropdb -h 127.0.0.1 -U postgres warmi_bench_$s; done

Phases: RPC round trips (bare kombu echo against nameko's standalone proxy
calling ``cases.health``) while idle; ``--cases`` cases as fast as ``--clients``
threads can open them, timed from the first request to the last e-mail; cases
at a fixed ``--rate`` (open loop), timed from each 201 to its e-mail; RSS and
CPU per process from each service's /metrics; the RPC round trips again.
It prints counts and timings only, never survivor codes. Targets from the
design brief: 300 cases/s, p99 201 to e-mail under 250 ms at 50/s, nameko RPC
at most 3x bare kombu, under 150 MB per process, no e-mail lost or repeated.
Exit code 0 even when a target is missed; 1 if the product cannot be reached;
2 if a target is not on this machine.
"""
from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import platform
import queue
import random
import re
import socket
import statistics as stats
import string
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
SMTP_HOST = "127.0.0.1"
RATE_THREADS = 32  # at least; two seconds' worth of sends at higher rates, so answers may lag that long
BEHIND_SECONDS = 0.05
READY_TIMEOUT = 60.0
CODE_RE = re.compile(r"\b[A-Z]{2,6}-\d{4}-\d{4,}\b")
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_METRICS = "cases=127.0.0.1:9101,notifications=127.0.0.1:9102,referrals=127.0.0.1:9103,gateway=127.0.0.1:9104"

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")


# -- safety --------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def foreign_targets(args) -> list[str]:
    hosts = {"gateway": urlsplit(args.gateway).hostname, "AMQP URI": urlsplit(args.amqp).hostname or "localhost",
             "SMTP listener": SMTP_HOST}
    hosts.update({f"metrics of {name}": addr.rpartition(":")[0].strip("[]") for name, addr in args.metrics.items()})
    for var in ("DATABASE_URL", "SMTP_URL"):
        value = os.environ.get(var, "")
        if value.startswith(("postgres", "smtp")):
            hosts[var] = urlsplit(value).hostname or "localhost"
    return [f"{what} ({host})" for what, host in hosts.items() if not host or not is_loopback(host)]


# -- mail ----------------------------------------------------------------------------------------
@dataclass
class Mail:
    at: float
    message_id: str
    codes: set


class Mailbox:
    """The aiosmtpd handler: a timestamp and the raw bytes, nothing more; parsed later."""

    def __init__(self):
        self.raw: list[tuple[float, bytes]] = []
        self.parsed: list[Mail] = []
        self.codes_seen: set[str] = set()

    async def handle_DATA(self, server, session, envelope):
        self.raw.append((time.monotonic(), envelope.original_content or envelope.content))
        return "250 Message accepted for delivery"

    def parse(self) -> None:
        from email import message_from_bytes, policy

        for at, raw in self.raw[len(self.parsed):]:
            msg = message_from_bytes(raw, policy=policy.default)
            body = msg.get_body(preferencelist=("plain",))
            codes = set(CODE_RE.findall(body.get_content() if body is not None else ""))
            self.parsed.append(Mail(at, str(msg.get("Message-ID", "")), codes))
            self.codes_seen |= codes


# -- product ------------------------------------------------------------------------------------
def random_code() -> str:
    return "".join(random.choices(string.ascii_uppercase, k=random.randint(4, 6)))


def create_organizations(count: int) -> list[str]:
    """Focal point tokens of ``count`` new organisations, each with one president."""
    warmi = Path(sys.executable).parent / "warmi"
    command = [str(warmi)] if warmi.exists() else [sys.executable, "-m", "warmi.cli"]
    tokens, tries = [], 0
    while len(tokens) < count:
        n, tries, code = len(tokens) + 1, tries + 1, random_code()
        done = subprocess.run(
            [*command, "create-organization", "--code", code, "--name", f"Bench committee {n}",
             "--timezone", "America/Lima", "--president-name", f"Bench president {n}",
             # e-mail addresses are one person's each: a new one per organisation, run after run
             "--president-email", f"bench-president-{code.lower()}@example.org",
             "--focal-point-name", f"Bench focal point {n}"],
            cwd=ROOT, capture_output=True, text=True)
        if done.returncode == 0:
            tokens.append(json.loads(done.stdout)["focal_point"]["token"])
        elif tries > count + 5:  # a code already taken is worth another try, not many
            raise RuntimeError(f"create-organization failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    # the cases and notifications services learn of new organisations from
    # identity's events, relayed by the gateway's process within a moment
    time.sleep(3.0)
    return tokens


class Client:
    """One keep-alive HTTP connection, opened again after an error."""

    def __init__(self, gateway: str):
        url = urlsplit(gateway)
        self.host, self.port, self.prefix = url.hostname, url.port or 80, url.path.rstrip("/")
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            self.conn.request(method, self.prefix + path, body=body, headers=headers or {})
            response = self.conn.getresponse()
            data = response.read()
        except Exception:
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def wait_ready(gateway: str, timeout: float) -> bool:
    client, deadline = Client(gateway), time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.request("GET", "/api/v1/ready")[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


@dataclass(eq=False)
class Case:
    sent: float = 0.0
    answered: float = 0.0
    status: int | None = None
    error: str | None = None
    code: str | None = None  # kept in memory only, never printed
    mails: list = field(default_factory=list)


def open_case(client: Client, token: str) -> Case:
    body = json.dumps({"age_group": "18-25", "narrative": "relato de prueba"}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    case = Case(sent=time.monotonic())
    try:
        case.status, data = client.request("POST", "/api/v1/cases", body, headers)
        if case.status == 201:
            case.code = json.loads(data)["survivor_code"]
    except Exception as exc:
        case.error = type(exc).__name__
    case.answered = time.monotonic()
    return case


# -- load phases ----------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    started: float = 0.0
    mail_index: int = 0
    cases: list = field(default_factory=list)
    behind: int = 0
    loads: list = field(default_factory=list)
    cpu: tuple = ()
    unexpected: int = 0
    ids: Counter = field(default_factory=Counter)

    def created(self) -> list[Case]:
        return [c for c in self.cases if c.status == 201]


def full_speed(args, tokens: list[str], phase: Phase) -> None:
    counter, lock = iter(range(args.cases)), threading.Lock()

    def worker():
        client = Client(args.gateway)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            phase.cases.append(open_case(client, tokens[i % len(tokens)]))
        client.close()

    run_threads(worker, args.clients)


def fixed_rate(args, tokens: list[str], phase: Phase) -> None:
    total, t0 = int(args.rate * args.rate_seconds), time.monotonic() + 0.2
    schedule: queue.Queue = queue.Queue()
    for i in range(total):
        schedule.put((i, t0 + i / args.rate))
    late = []

    def worker():
        client = Client(args.gateway)
        while True:
            try:
                i, when = schedule.get_nowait()
            except queue.Empty:
                break
            time.sleep(max(0.0, when - time.monotonic()))
            if time.monotonic() - when > BEHIND_SECONDS:
                late.append(i)
            phase.cases.append(open_case(client, tokens[i % len(tokens)]))
        client.close()

    run_threads(worker, max(1, min(total, max(RATE_THREADS, int(2 * args.rate)))))
    phase.behind = len(late)


def run_threads(target, count: int) -> None:
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def drain(mailbox: Mailbox, phase: Phase, timeout: float) -> None:
    """Wait until every case opened in the phase has an e-mail, or the timeout."""
    want = {c.code for c in phase.created()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(mailbox.raw) - phase.mail_index >= len(want):  # cheap; parse only when it may be complete
            mailbox.parse()
            if want <= mailbox.codes_seen:
                return
        time.sleep(0.05)
    mailbox.parse()


class LoadSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(1.0 if self.samples else 0.0):
            self.samples.append(os.getloadavg()[0])


def run_phase(name: str, load, args, tokens, mailbox: Mailbox) -> Phase:
    phase = Phase(name, started=time.monotonic(), mail_index=len(mailbox.raw))
    sampler = LoadSampler()
    sampler.start()
    before = cpu_snapshot(args.metrics)
    load(args, tokens, phase)
    drain(mailbox, phase, args.drain_timeout)
    phase.cpu = (before, cpu_snapshot(args.metrics))
    sampler.halt.set()
    sampler.join()
    phase.loads = sampler.samples
    return phase


def account(phases: list[Phase], mailbox: Mailbox) -> None:
    """Give each e-mail to its case by survivor code; count the rest per phase."""
    mailbox.parse()
    by_code = {c.code: (c, p) for p in phases for c in p.created()}
    for mail in mailbox.parsed:
        matched = [by_code[code] for code in mail.codes if code in by_code]
        for case, _ in matched:
            case.mails.append(mail)
        owner = matched[0][1] if matched else None
        if owner is None:
            owner = next((p for p in reversed(phases) if mail.at >= p.started), phases[0])
            owner.unexpected += 1
        owner.ids[mail.message_id] += 1


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))]


def phase_figures(p: Phase) -> dict:
    created = p.created()
    mailed = [c for c in created if c.mails]
    out = {
        "requests": len(p.cases), "created": len(created),
        "lost": len(created) - len(mailed),
        "duplicated": sum(1 for c in created if len(c.mails) > 1),
        "repeated_message_ids": sum(n - 1 for n in p.ids.values() if n > 1),
        "unexpected": p.unexpected,
        "non_201": dict(Counter(str(c.status) for c in p.cases if c.status not in (None, 201))),
        "errors": dict(Counter(c.error for c in p.cases if c.error)),
        "loadavg_1m_mean": round(stats.fmean(p.loads), 2) if p.loads else None,
        "loadavg_1m_max": round(max(p.loads), 2) if p.loads else None,
    }
    if created:
        first = min(c.sent for c in p.cases)
        out["http_201_per_s"] = len(created) / max(1e-9, max(c.answered for c in created) - first)
        if mailed:
            last_mail = max(min(m.at for m in c.mails) for c in mailed)
            out["cases_per_s"] = len(created) / max(1e-9, last_mail - first)
        mail_ms = [(min(m.at for m in c.mails) - c.answered) * 1000 for c in mailed]
        http_ms = [(c.answered - c.sent) * 1000 for c in created]
        for label, values in (("mail", mail_ms), ("http", http_ms)):
            for q in (50, 90, 99):
                out[f"{label}_p{q}_ms"] = round(pct(values, q), 1)
            out[f"{label}_max_ms"] = round(max(values), 1) if values else None
    if p.name == "rate":
        out["behind_schedule"] = p.behind
    out["cpu_ms_per_case"] = cpu_per_case(p.cpu, len(created))
    return out


# -- processes -------------------------------------------------------------------------------------
def read_metrics(address: str) -> dict[str, float] | None:
    host, _, port = address.rpartition(":")
    try:
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    except (OSError, ValueError):
        return None
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("process_resident_memory_bytes", "process_cpu_seconds_total"):
            found[name] = float(value)
    return found if len(found) == 2 else None


def proc_stat_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_bytes(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024.0
    return 0.0


def pids_where(test) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if test(proc):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def serve_pids(name: str) -> list[int]:
    home = os.environ.get("WARMI_HOME")

    def test(proc: Path) -> bool:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        if b"warmi.cli" not in argv or argv[-3:-1] != [b"serve", name.encode()]:
            return False
        return not home or f"WARMI_HOME={home}".encode() in (proc / "environ").read_bytes().split(b"\0")

    return pids_where(test)


def summed(pids: list[int], read) -> float | None:
    values = []
    for pid in pids:
        try:
            values.append(read(pid))
        except OSError:
            continue
    return sum(values) if values else None


def process_snapshot(metrics: dict[str, str]) -> dict[str, dict]:
    """RSS (bytes) and CPU seconds of each service, from /metrics or else /proc."""
    snap = {}
    for name, address in metrics.items():
        found = read_metrics(address)
        if found:
            snap[name] = {"rss": found["process_resident_memory_bytes"],
                          "cpu": found["process_cpu_seconds_total"], "source": "metrics"}
        else:
            pids = serve_pids(name)
            snap[name] = {"rss": summed(pids, proc_rss_bytes), "cpu": summed(pids, proc_stat_seconds),
                          "source": f"/proc ({len(pids)} pid)"}
    return snap


def cpu_snapshot(metrics: dict[str, str]) -> dict[str, float | None]:
    cpu = {name: v["cpu"] for name, v in process_snapshot(metrics).items()}
    for label, comm in (("rabbitmq", "beam.smp"), ("postgresql", "postgres")):
        by_pid = {}  # per process: a backend that ends or starts in a phase must not skew the sum
        for pid in pids_where(lambda proc, comm=comm: (proc / "comm").read_text().strip() == comm):
            try:
                by_pid[pid] = proc_stat_seconds(pid)
            except OSError:
                continue
        cpu[label] = by_pid
    cpu["bench"] = proc_stat_seconds(os.getpid())
    return cpu


def cpu_delta(before, after) -> float | None:
    if isinstance(after, dict):
        return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
    return None if before is None or after is None else after - before


def cpu_per_case(cpu: tuple, cases: int) -> dict:
    if not cpu or not cases:
        return {}
    before, after = cpu
    deltas = {name: cpu_delta(before.get(name), after[name]) for name in after}
    return {name: round(d * 1000 / cases, 2) for name, d in deltas.items() if d is not None}


# -- RPC reference ---------------------------------------------------------------------------------
RESPONDER = r"""
import sys
from kombu import Connection, Consumer, Producer, Queue
uri, name = sys.argv[1], sys.argv[2]
with Connection(uri) as conn:
    channel = conn.channel()
    producer = Producer(channel, serializer="json")
    def echo(body, message):
        producer.publish(body, routing_key=message.properties["reply_to"],
                         correlation_id=message.properties["correlation_id"])
        message.ack()
    with Consumer(channel, [Queue(name, exclusive=True, auto_delete=True)], callbacks=[echo], accept=["json"]):
        print("ready", flush=True)
        while True:
            conn.drain_events()
"""


def kombu_round_trips(uri: str, calls: int, warmup: int) -> list[float]:
    from kombu import Connection, Consumer, Producer, Queue

    name = f"bench-echo-{uuid.uuid4().hex}"
    responder = subprocess.Popen([sys.executable, "-c", RESPONDER, uri, name], stdout=subprocess.PIPE, text=True)
    try:
        if responder.stdout.readline().strip() != "ready":
            raise RuntimeError("the kombu responder did not start")
        with Connection(uri) as conn:
            channel = conn.channel()
            replies: dict[str, object] = {}

            def on_reply(body, message):
                replies[message.properties["correlation_id"]] = body
                message.ack()

            reply_queue = Queue(f"bench-reply-{uuid.uuid4().hex}", exclusive=True, auto_delete=True)
            producer = Producer(channel, serializer="json")
            times = []
            with Consumer(channel, [reply_queue], callbacks=[on_reply], accept=["json"]):
                for i in range(warmup + calls):
                    cid = uuid.uuid4().hex
                    started = time.perf_counter()
                    producer.publish({"args": [], "kwargs": {}}, routing_key=name, reply_to=reply_queue.name,
                                     correlation_id=cid)
                    while replies.pop(cid, None) is None:
                        conn.drain_events(timeout=10)
                    if i >= warmup:
                        times.append(time.perf_counter() - started)
            return times
    finally:
        responder.terminate()
        responder.wait(timeout=10)


def nameko_round_trips(uri: str, calls: int, warmup: int) -> list[float]:
    from nameko.standalone.rpc import ClusterRpcProxy

    times = []
    with ClusterRpcProxy({"AMQP_URI": uri}, timeout=10) as rpc:
        for i in range(warmup + calls):
            started = time.perf_counter()
            rpc.cases.health()
            if i >= warmup:
                times.append(time.perf_counter() - started)
    return times


def rpc_reference(args) -> dict:
    out = {}
    for label, measure in (("kombu", kombu_round_trips), ("nameko", nameko_round_trips)):
        try:
            times = measure(args.amqp, args.rpc_calls, 200)
            out[f"{label}_median_us"] = round(stats.median(times) * 1e6)
            out[f"{label}_p99_us"] = round(pct(times, 99) * 1e6)
        except Exception as exc:
            out[f"{label}_error"] = type(exc).__name__
    if out.get("kombu_median_us") and out.get("nameko_median_us"):
        out["ratio"] = round(out["nameko_median_us"] / out["kombu_median_us"], 2)
    return out


# -- report ----------------------------------------------------------------------------------------
def show_rpc(label: str, r: dict) -> None:
    if "ratio" not in r:
        print(f"RPC {label}: failed {r}")
        return
    print(f"RPC {label}: kombu median {r['kombu_median_us']} µs p99 {r['kombu_p99_us']} µs; "
          f"nameko cases.health median {r['nameko_median_us']} µs p99 {r['nameko_p99_us']} µs; "
          f"ratio {r['ratio']}x (target <= 3x)")


def show_phase(name: str, f: dict) -> None:
    print(f"\n{name}: {f['requests']} requests, {f['created']} created (201)")
    if "cases_per_s" in f:
        print(f"  cases/s, first request to last e-mail: {f['cases_per_s']:.1f}")
    if "http_201_per_s" in f:
        print(f"  201/s, first request to last 201:      {f['http_201_per_s']:.1f}")
    if "mail_p50_ms" in f:
        print(f"  201 -> e-mail ms: p50 {f['mail_p50_ms']} p90 {f['mail_p90_ms']} p99 {f['mail_p99_ms']} "
              f"max {f['mail_max_ms']}")
        print(f"  request -> 201 ms: p50 {f['http_p50_ms']} p99 {f['http_p99_ms']} max {f['http_max_ms']}")
    if "behind_schedule" in f:
        print(f"  sends more than {BEHIND_SECONDS * 1000:.0f} ms behind schedule: {f['behind_schedule']}")
    print(f"  e-mails lost {f['lost']}, duplicated {f['duplicated']}, repeated Message-IDs "
          f"{f['repeated_message_ids']}, unexpected {f['unexpected']}")
    print(f"  non-201 answers {f['non_201'] or 0}, connection errors {f['errors'] or 0}")
    print(f"  load average (1 min) mean {f['loadavg_1m_mean']} max {f['loadavg_1m_max']}")
    print("  CPU ms per case: " + ", ".join(f"{k} {v}" for k, v in f["cpu_ms_per_case"].items()))


def show_rss(snaps: dict[str, dict]) -> None:
    print("\nRSS MB per process (target < 150): " + " / ".join(snaps))
    for name in next(iter(snaps.values())):
        cells = [f"{s[name]['rss'] / 2**20:.0f}" if s[name]["rss"] else "?" for s in snaps.values()]
        print(f"  {name:<14} {' / '.join(cells):<20} ({next(iter(snaps.values()))[name]['source']})")


def summary(fig: dict) -> list[tuple[str, str, bool | None]]:
    full, rate = fig["phases"].get("full", {}), fig["phases"].get("rate", {})
    rows = [("cases/s (first request to last e-mail)  >= 300", full.get("cases_per_s"),
             lambda v: v >= 300),
            (f"p99 201->e-mail at {fig['rate']:g}/s < 250 ms", rate.get("mail_p99_ms"), lambda v: v < 250)]
    for when in ("before", "after"):
        rows.append((f"nameko/kombu RPC <= 3x ({when} load)", fig["rpc"].get(when, {}).get("ratio"),
                     lambda v: v <= 3))
    rss = [s["rss"] / 2**20 for snap in fig["rss"].values() for s in snap.values() if s["rss"]]
    rows.append(("RSS per process < 150 MB (largest)", max(rss) if rss else None, lambda v: v < 150))
    if fig["phases"]:
        lost = sum(p["lost"] for p in fig["phases"].values())
        dup = sum(p["duplicated"] + p["repeated_message_ids"] for p in fig["phases"].values())
        rows.append(("lost 0 duplicated 0", f"lost {lost} duplicated {dup}", lambda v: lost == 0 and dup == 0))
    out = []
    for label, value, ok in rows:
        if value is None:
            out.append((label, "skipped", None))
        else:
            shown = f"{value:.1f}" if isinstance(value, float) else str(value)
            out.append((label, shown, bool(ok(value))))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Case intake through a running Warmi: HTTP 201 to the president's e-mail.")
    p.add_argument("--gateway", default="http://127.0.0.1:8000")
    p.add_argument("--smtp-port", type=int, default=2525)
    p.add_argument("--organizations", type=int, default=4)
    p.add_argument("--cases", type=int, default=3000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--rate-seconds", type=float, default=20.0)
    p.add_argument("--drain-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=5.0)
    p.add_argument("--rpc-calls", type=int, default=2000)
    p.add_argument("--metrics", default=DEFAULT_METRICS, help="name=host:port,...")
    p.add_argument("--amqp", default=os.environ.get("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"))
    p.add_argument("--database-label",
                   default="postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite")
    p.add_argument("--skip-full", action="store_true")
    p.add_argument("--skip-rate", action="store_true")
    p.add_argument("--skip-rpc", action="store_true")
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args(argv)
    args.metrics = dict(item.split("=", 1) for item in args.metrics.split(",") if item)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    foreign = foreign_targets(args)
    if foreign:
        print("refusing targets that are not this machine (loopback): " + ", ".join(foreign), file=sys.stderr)
        return 2
    smtp_url = urlsplit(os.environ.get("SMTP_URL", ""))
    if smtp_url.port and smtp_url.port != args.smtp_port:
        print(f"note: SMTP_URL names port {smtp_url.port}, this bench listens on {args.smtp_port}", file=sys.stderr)
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, database {args.database_label}")

    from aiosmtpd.controller import Controller

    mailbox = Mailbox()
    controller = Controller(mailbox, hostname=SMTP_HOST, port=args.smtp_port)
    controller.start()
    try:
        return bench(args, mailbox)
    finally:
        controller.stop()


def bench(args, mailbox: Mailbox) -> int:
    if not wait_ready(args.gateway, READY_TIMEOUT):
        print(f"the gateway at {args.gateway} did not answer /api/v1/ready with 200", file=sys.stderr)
        return 1
    started = time.monotonic()
    try:
        tokens = create_organizations(args.organizations)
    except (RuntimeError, ValueError, KeyError) as exc:
        print(f"could not create the organisations: {exc}", file=sys.stderr)
        return 1
    print(f"created {len(tokens)} organisations in {time.monotonic() - started:.1f} s")
    fig: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "database": args.database_label},
                 "rate": args.rate, "rpc": {}, "phases": {}, "rss": {}}
    fig["rss"]["before"] = process_snapshot(args.metrics)
    if not args.skip_rpc:
        fig["rpc"]["before"] = rpc_reference(args)
        show_rpc("before load", fig["rpc"]["before"])
    phases = []
    for name, skip, load in (("full", args.skip_full, full_speed), ("rate", args.skip_rate, fixed_rate)):
        if not skip:
            phases.append(run_phase(name, load, args, tokens, mailbox))
    fig["rss"]["after drain"] = process_snapshot(args.metrics)
    time.sleep(args.settle)
    fig["rss"][f"after {args.settle:g} s"] = process_snapshot(args.metrics)
    if phases:
        account(phases, mailbox)
        for p in phases:
            fig["phases"][p.name] = phase_figures(p)
            title = {"full": f"full speed, {args.clients} clients",
                     "rate": f"fixed rate {args.rate:g}/s for {args.rate_seconds:g} s"}[p.name]
            show_phase(title, fig["phases"][p.name])
    show_rss(fig["rss"])
    if not args.skip_rpc:
        fig["rpc"]["after"] = rpc_reference(args)
        show_rpc("after load", fig["rpc"]["after"])
    fig["summary"] = [{"target": t, "value": v, "ok": ok} for t, v, ok in summary(fig)]
    print("\nsummary")
    for row in fig["summary"]:
        mark = "skipped" if row["ok"] is None else ("ok" if row["ok"] else "MISSED")
        print(f"  {row['target']:<48} {row['value']:<24} {mark}")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
