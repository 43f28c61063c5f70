"""Benchmark (not a test): the deadline sweep over 1,000,000 open plan steps
and the anonymised statistics over 1,000,000 cases, on PostgreSQL.

    .venv/bin/python bench/cases_at_scale.py [--server postgresql://postgres@127.0.0.1:5432] [--keep]

It makes a throwaway database, fills it with generated rows (no real data),
times each operation several times and prints the figures. The sweep finds 1%
of the steps due (a catch-up after a pause; a sweep every 30 s finds far
fewer). Statistics read the cells kept as cases change (rebuilt once here,
after the bulk load). Targets from the
design brief: sweep under 2 s, statistics under 500 ms.
"""
from __future__ import annotations

import argparse
import statistics as stats
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from servicekit.database import make_engine  # noqa: E402
from servicekit.migrations import upgrade  # noqa: E402
from services.cases.adapters import cells  # noqa: E402
from services.cases.domain.access import Caller  # noqa: E402
from services.cases.domain.deadlines import AlertPolicy  # noqa: E402
from services.cases.service_layer import queries  # noqa: E402
from services.cases.service_layer.sweep import sweep  # noqa: E402
from services.cases.service_layer.unit_of_work import UnitOfWork  # noqa: E402

ROWS = 1_000_000
DUE_SHARE = 0.01  # share of open steps with an alert due at the sweep


def seed(engine, organization: str, now: datetime) -> None:
    """1M cases (all consented to reporting) and 1M open steps, in SQL."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO organizations (id, code, timezone, created_at, protocol_id, protocol_version) "
                          "VALUES (:id, 'CEC', 'America/Lima', :now, 'smp-gbv', 1)"), {"id": organization, "now": now})
        conn.execute(text("""
            INSERT INTO cases (id, organization_id, survivor_code, status, age_group, sex, opened_at, opened_by,
                               version, minor, context_flags, incident_type, protocol_id, protocol_version,
                               opened_month, reporting_consent)
            SELECT md5(g::text)::uuid::text, :org, 'CEC-' || g, 'open',
                   (ARRAY['0-11','12-17','18-25','26-40','41-60','61+'])[1 + g % 6], 'female',
                   :now - (g % 700) * interval '1 day', :org, 1, g % 6 < 2,
                   CASE WHEN g % 7 = 0 THEN 'intimate_partner_violence' ELSE '' END,
                   (ARRAY['rape','sexual_assault','physical_assault','forced_marriage','denial_of_resources',
                          'psychological_abuse','non_gbv'])[1 + g % 7], 'smp-gbv', 1,
                   to_char(timezone('America/Lima', :now - (g % 700) * interval '1 day'), 'YYYY-MM'), true
            FROM generate_series(1, :n) AS g"""), {"org": organization, "now": now, "n": ROWS})
        conn.execute(text("""
            INSERT INTO consents (id, case_id, purpose, data_shared, given_by, recorded_by, recorded_at)
            SELECT md5('c' || g::text)::uuid::text, md5(g::text)::uuid::text, 'aggregate_reporting', '',
                   'survivor', :org, :now
            FROM generate_series(1, :n) AS g"""), {"org": organization, "now": now, "n": ROWS})
        due_every = int(1 / DUE_SHARE)
        conn.execute(text("""
            INSERT INTO plan_steps (case_id, organization_id, step_id, ref, responsible, due_at, urgent, status,
                                    alert_stage, next_alert_at)
            SELECT md5(g::text)::uuid::text, :org, 'R4', substr(md5('s' || g::text), 1, 16), 'case_lead', t.due,
                   true, 'open', 1, t.due
            FROM generate_series(1, :n) AS g,
                 LATERAL (SELECT CASE WHEN g % :every = 0 THEN :now - interval '10 minutes'
                                      ELSE :now + (g % 500) * interval '1 hour' END AS due) AS t"""),
                     {"org": organization, "now": now, "n": ROWS, "every": due_every})
    with sessionmaker(engine)() as session:
        started = time.perf_counter()
        cells.recount(session)  # a bulk load bypasses the per-case bookkeeping
        session.commit()
        print(f"counted the statistics cells of {ROWS:,} cases in {time.perf_counter() - started:.1f} s")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def timed(fn, repeat: int) -> list[float]:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="postgresql+psycopg2://postgres@127.0.0.1:5432")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    name = f"warmi_bench_{uuid.uuid4().hex[:8]}"
    url = f"{args.server}/{name}"
    upgrade("cases", url)
    engine = make_engine(url)
    now = datetime.now(timezone.utc)
    organization = str(uuid.uuid4())
    try:
        started = time.perf_counter()
        seed(engine, organization, now)
        print(f"seeded {ROWS:,} cases, consents and open steps in {time.perf_counter() - started:.1f} s")

        sessions = sessionmaker(engine)
        for label, every in (("catch-up", 1), ("regular", 10)):
            sweeps = []
            for _ in range(3):
                with engine.begin() as conn:  # put the same steps back in front of the sweep
                    conn.execute(text("DELETE FROM outbox"))
                    conn.execute(text("UPDATE plan_steps SET alert_stage = 1, next_alert_at = due_at "
                                      "WHERE due_at <= :now AND (id / 100) % :every = 0"), {"now": now, "every": every})
                start = time.perf_counter()
                staged = sweep(sessions, AlertPolicy(), now=now)  # the batch size the service sweeps with
                sweeps.append(time.perf_counter() - start)
            print(f"{label} sweep over {ROWS:,} open steps, {staged:,} alerts due: median "
                  f"{stats.median(sweeps):.3f} s, runs {[round(s, 3) for s in sweeps]} (target < 2 s)")

        caller = Caller(str(uuid.uuid4()), organization, frozenset({"programme"}))

        def figures():
            with sessions() as session:
                queries.statistics(UnitOfWork(session), caller, {})

        runs = timed(figures, 5)
        print(f"statistics over {ROWS:,} consented cases: median {stats.median(runs) * 1000:.0f} ms, "
              f"runs {[round(r * 1000) for r in runs]} ms (target < 500 ms)")
    finally:
        engine.dispose()
        if not args.keep:
            admin = create_engine(f"{args.server}/postgres", isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
