"""Benchmark (not a test): reads of one organisation's cases in parallel,
through the service layer, on PostgreSQL. Every read of a case is audited,
so this measures how much the audit trail makes reads wait on each other.

    .venv/bin/python bench/parallel_reads.py [--server postgresql+psycopg2://postgres@127.0.0.1:5432]
                                             [--threads 8] [--cases 64] [--seconds 10] [--keep]

It makes a throwaway database, opens ``--cases`` cases (generated, no real
data) in one organisation, then runs ``--threads`` threads for ``--seconds``,
each reading its own cases (``case_detail``, as ``GET /cases/{id}`` does) in
a loop, each read its own transaction; it prints reads/s and latency
percentiles, then checks the audit trail.
"""
from __future__ import annotations

import argparse
import base64
import os
import secrets
import statistics as stats
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# a throwaway audit key for this run (the trail needs one; older code ignores it)
os.environ.setdefault("AUDIT_KEYS", "bench:" + base64.b64encode(secrets.token_bytes(32)).decode())

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from servicekit.database import make_engine  # noqa: E402
from servicekit.migrations import upgrade  # noqa: E402
from services.cases.adapters.crypto import KeyRing  # noqa: E402
from services.cases.domain.access import Caller  # noqa: E402
from services.cases.service_layer import handlers, queries  # noqa: E402
from services.cases.service_layer.unit_of_work import UnitOfWork  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--server", default="postgresql+psycopg2://postgres@127.0.0.1:5432")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--cases", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()

    name = f"warmi_bench_reads_{uuid.uuid4().hex[:8]}"
    url = f"{args.server}/{name}"
    ring = KeyRing([Fernet.generate_key().decode()])
    organization = str(uuid.uuid4())
    focal_point = Caller(str(uuid.uuid4()), organization, frozenset({"focal_point"}))
    president = Caller(str(uuid.uuid4()), organization, frozenset({"president"}))
    engine = None
    try:
        upgrade("cases", url)
        engine = make_engine(url)
        sessions = sessionmaker(engine, expire_on_commit=False)
        with sessions() as session:
            handlers.register_organization(UnitOfWork(session), organization_id=organization, code="CEC",
                                           timezone_name="America/Lima")
        case_ids = []
        for _ in range(args.cases):
            with sessions() as session:
                case = handlers.open_case(UnitOfWork(session), ring, focal_point,
                                          {"age_group": "18-25", "narrative": "generated text"})
                case_ids.append(case.id)

        latencies: list[list[float]] = [[] for _ in range(args.threads)]
        errors: list[BaseException] = []
        start = threading.Barrier(args.threads + 1)
        stop_at = [0.0]

        def reader(n: int) -> None:
            mine = case_ids[n::args.threads]
            start.wait()
            i = 0
            try:
                while time.perf_counter() < stop_at[0]:
                    began = time.perf_counter()
                    with sessions() as session:
                        queries.case_detail(UnitOfWork(session), ring, president, mine[i % len(mine)])
                    latencies[n].append(time.perf_counter() - began)
                    i += 1
            except BaseException as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(args.threads)]
        for t in threads:
            t.start()
        stop_at[0] = time.perf_counter() + args.seconds
        began = time.perf_counter()
        start.wait()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
        if errors:
            print(f"{len(errors)} reader(s) failed: {errors[0]!r}")
            return 1
        every = sorted(x for per in latencies for x in per)
        q = stats.quantiles(every, n=100)
        print(f"{args.threads} threads, {args.cases} cases of one organisation, {elapsed:.1f} s: "
              f"{len(every) / elapsed:.0f} reads/s, p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
              f"max {every[-1] * 1000:.1f} ms")
        with sessions() as session:
            problems = queries.verify_audit(UnitOfWork(session))
        print("audit trail intact" if not problems else f"audit trail: {len(problems)} problem(s)")
        return 0 if not problems else 1
    finally:
        if engine is not None:
            engine.dispose()
        if not args.keep:
            admin = create_engine(f"{args.server}/postgres", isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
