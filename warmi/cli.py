"""The ``warmi`` command for operators. ``warmi --help`` lists what it does."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

# eventlet announces its deprecation on import; operators cannot act on it
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")


def _amqp_uri() -> str:
    return os.environ.get("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")


def cmd_serve(args) -> int:
    from warmi.serve import serve

    serve(args.service)
    return 0


def cmd_run(args) -> int:
    from warmi.admin import migrate_all
    from warmi.supervisor import run

    _init_keys()
    migrate_all()
    _declare_topology()
    return run()


def _declare_topology() -> bool:
    """Every consumer queue of the catalogue, before anything is published.
    The services declare it too when they start, so a broker that cannot be
    reached yet is only worth a warning here."""
    from kombu import Connection

    from servicekit.topology import declare

    try:
        with Connection(_amqp_uri(), connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
            declare(conn)
    except Exception as exc:
        print(f"could not declare the event queues yet ({type(exc).__name__}); "
              "each service declares them when it starts", file=sys.stderr)
        return False
    return True


def cmd_migrate(args) -> int:
    from warmi.admin import migrate_all

    migrate_all()
    print("databases are up to date")
    if _declare_topology():
        print("event queues are declared")
    return 0


def _init_keys() -> None:
    from services.cases.adapters.crypto import new_key_file
    from servicekit.config import home

    if os.environ.get("CASES_ENCRYPTION_KEYS"):
        return
    path = Path(os.environ.get("CASES_ENCRYPTION_KEYS_FILE") or home() / "cases.keys")
    if new_key_file(path):
        print(f"created an encryption key for case fields in {path}; keep it safe and backed up")


def cmd_create_organization(args) -> int:
    from contracts.errors import WarmiError
    from warmi.admin import create_organization, migrate_all

    migrate_all()
    try:
        result = create_organization(
            code=args.code, name=args.name, timezone_name=args.timezone, locale=args.locale,
            president_name=args.president_name, president_email=args.president_email,
            focal_point_name=args.focal_point_name,
        )
    except WarmiError as err:
        return _fail(err)
    print(json.dumps(result, indent=2))
    print("Tokens are shown once; hand each to its holder.", file=sys.stderr)
    return 0


def _fail(err) -> int:
    print(json.dumps({"error": {"code": err.code, "message": err.message, "fields": err.fields}}), file=sys.stderr)
    return 2


def cmd_create_user(args) -> int:
    from contracts.errors import WarmiError
    from warmi.admin import create_user, migrate_all

    migrate_all()
    try:
        result = create_user(
            org_code=args.org, roles=args.role, name=args.name, email=args.email, locale=args.locale,
            supervises=[c for c in (args.supervises or "").split(",") if c],
        )
    except WarmiError as err:
        return _fail(err)
    print(json.dumps(result, indent=2))
    print("The token is shown once; hand it to its holder.", file=sys.stderr)
    return 0


def cmd_create_provider(args) -> int:
    from contracts.errors import WarmiError
    from warmi.admin import create_provider, migrate_all

    migrate_all()
    try:
        result = create_provider(org_code=args.org, name=args.name, kind=args.kind)
    except WarmiError as err:
        return _fail(err)
    print(json.dumps(result, indent=2))
    return 0


def _key_file() -> Path:
    from servicekit.config import home

    return Path(os.environ.get("CASES_ENCRYPTION_KEYS_FILE") or home() / "cases.keys")


def _keyring():
    from services.cases.adapters.crypto import KeyRing

    return KeyRing.from_settings(os.environ.get("CASES_ENCRYPTION_KEYS"), str(_key_file()))


def cmd_keys(args) -> int:
    from cryptography.fernet import Fernet

    from services.cases.adapters.crypto import KeyRing
    from services.cases.service_layer import keys
    from warmi.admin import session_for

    if args.action == "init":
        _init_keys()
        return 0
    if args.action == "add":
        if os.environ.get("CASES_ENCRYPTION_KEYS"):
            print("keys come from CASES_ENCRYPTION_KEYS: put a new key first there", file=sys.stderr)
            return 2
        path = _key_file()
        existing = path.read_text().split() if path.exists() else []
        path.write_text("\n".join([Fernet.generate_key().decode(), *existing]) + "\n")
        path.chmod(0o600)
        print(f"added a new newest key to {path}; run `warmi keys rotate`, then `warmi keys retire`")
        return 0
    ring = _keyring()
    with session_for("cases") as session:
        if args.action == "rotate":
            print(f"re-encrypted {keys.rotate(session, ring)} row(s) with the newest key")
            return 0
        # retire: keep only the newest key, once everything reads with it alone
        path = _key_file()
        if os.environ.get("CASES_ENCRYPTION_KEYS") or not path.exists():
            print("retire works on the key file; with CASES_ENCRYPTION_KEYS, drop the old keys there", file=sys.stderr)
            return 2
        newest = path.read_text().split()[0]
        if not keys.retirable(session, KeyRing([newest])):
            print("some fields still need an old key: run `warmi keys rotate` first", file=sys.stderr)
            return 1
        path.write_text(newest + "\n")
        print("old keys retired")
        return 0


def cmd_audit(args) -> int:
    from services.cases.service_layer import queries
    from services.cases.service_layer.unit_of_work import UnitOfWork
    from warmi.admin import session_for

    with session_for("cases") as session:
        breaks = queries.verify_audit(UnitOfWork(session))
    for found in breaks:
        print(json.dumps({"organization_id": found.organization_id, "entry_id": found.entry_id,
                          "problem": found.reason}))
    if breaks:
        print("the audit trail was altered", file=sys.stderr)
        return 1
    print("the audit trail is intact")
    return 0


def cmd_statistics(args) -> int:
    from contracts.errors import WarmiError
    from services.cases.domain.access import Caller
    from services.cases.service_layer import queries
    from services.cases.service_layer.unit_of_work import UnitOfWork
    from warmi.admin import migrate_all, organization_id_of, session_for

    migrate_all()
    try:
        organization_id = organization_id_of(args.org)
    except WarmiError as err:
        return _fail(err)
    caller = Caller("00000000-0000-0000-0000-000000000000", organization_id, frozenset({"programme"}))
    with session_for("cases") as session:
        if args.recount:
            from services.cases.adapters import cells

            cells.recount(session)
            session.commit()
        figures = queries.statistics(UnitOfWork(session), caller, {"from": args.from_month, "to": args.to_month})
    print(queries.statistics_csv(figures), end="")
    return 0


def cmd_assign_protocol(args) -> int:
    from contracts.errors import WarmiError
    from services.cases.service_layer import handlers
    from services.cases.service_layer.unit_of_work import UnitOfWork
    from warmi.admin import migrate_all, organization_id_of, session_for

    migrate_all()
    try:
        organization_id = organization_id_of(args.org)
        with session_for("cases") as session:
            handlers.assign_protocol(UnitOfWork(session), organization_id=organization_id,
                                     protocol_id=args.protocol, version=args.version)
    except WarmiError as err:
        return _fail(err)
    print(f"new cases of {args.org} follow {args.protocol} v{args.version}")
    return 0


def cmd_mail_sink(args) -> int:
    from servicekit.config import home
    from warmi.mailsink import run_sink

    run_sink(Path(args.dir) if args.dir else home() / "mail", port=args.port)
    return 0


def cmd_dead_letters(args) -> int:
    from servicekit.deadletters import list_dead_letters, replay

    if args.action == "list":
        letters = list_dead_letters(_amqp_uri())
        for letter in letters:
            print(json.dumps(letter.__dict__))
        print(f"{len(letters)} dead letter(s)", file=sys.stderr)
    else:
        count = replay(_amqp_uri(), message_id=args.id)
        print(f"replayed {count} dead letter(s)")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="warmi", description="Operate Warmi.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("run", help="migrate, then run every service, the gateway and a local mail sink").set_defaults(fn=cmd_run)
    s = sub.add_parser("serve", help="run one service in this process")
    s.add_argument("service", choices=["cases", "notifications", "referrals", "gateway"])
    s.set_defaults(fn=cmd_serve)
    sub.add_parser("migrate", help="create or upgrade every service's database").set_defaults(fn=cmd_migrate)

    k = sub.add_parser("keys", help="encryption keys of case fields: init, add a new one, rotate, retire old ones")
    k.add_argument("action", choices=["init", "add", "rotate", "retire"])
    k.set_defaults(fn=cmd_keys)

    u = sub.add_parser("create-user", help="a person of an organisation, with a token")
    u.add_argument("--org", required=True, help="the organisation's code, e.g. CEC")
    u.add_argument("--role", required=True, action="append",
                   choices=["focal_point", "case_lead", "president", "supervisor", "programme", "operator"])
    u.add_argument("--name", required=True)
    u.add_argument("--email", default=None, help="to receive notifications")
    u.add_argument("--locale", default="es", choices=["es", "en"])
    u.add_argument("--supervises", default=None, help="codes of the organisations a supervisor supervises")
    u.set_defaults(fn=cmd_create_user)

    pr = sub.add_parser("create-provider", help="a local service provider survivors can be referred to")
    pr.add_argument("--org", required=True)
    pr.add_argument("--name", required=True)
    pr.add_argument("--kind", required=True,
                    choices=["health_post", "cem", "police", "prosecutor", "legal_aid", "psychosocial", "shelter",
                             "other"])
    pr.set_defaults(fn=cmd_create_provider)

    a = sub.add_parser("audit", help="the audit trail of case reads and writes")
    a.add_argument("action", choices=["verify"])
    a.set_defaults(fn=cmd_audit)

    st = sub.add_parser("statistics", help="anonymised figures of an organisation, as CSV")
    st.add_argument("--org", required=True)
    st.add_argument("--from", dest="from_month", default=None, help="first month, YYYY-MM")
    st.add_argument("--to", dest="to_month", default=None, help="last month, YYYY-MM")
    st.add_argument("--recount", action="store_true", help="rebuild the counts from the cases first")
    st.set_defaults(fn=cmd_statistics)

    ap = sub.add_parser("assign-protocol", help="the remediation protocol new cases of an organisation follow")
    ap.add_argument("--org", required=True)
    ap.add_argument("--protocol", default="smp-gbv")
    ap.add_argument("--version", type=int, default=1)
    ap.set_defaults(fn=cmd_assign_protocol)

    o = sub.add_parser("create-organization", help="an organisation with its president and a focal point")
    o.add_argument("--code", required=True, help="prefix of survivor codes, e.g. CEC")
    o.add_argument("--name", required=True)
    o.add_argument("--timezone", default="America/Lima")
    o.add_argument("--locale", default="es", choices=["es", "en"])
    o.add_argument("--president-name", required=True)
    o.add_argument("--president-email", required=True)
    o.add_argument("--focal-point-name", required=True)
    o.set_defaults(fn=cmd_create_organization)

    m = sub.add_parser("mail-sink", help="a local SMTP server that writes each message to a folder")
    m.add_argument("--dir", default=None)
    m.add_argument("--port", type=int, default=8025)
    m.set_defaults(fn=cmd_mail_sink)

    d = sub.add_parser("dead-letters", help="events that exhausted their retries, could not be handled, or found no queue")
    d.add_argument("action", choices=["list", "replay"])
    d.add_argument("--id", default=None, help="replay only the message with this id")
    d.set_defaults(fn=cmd_dead_letters)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
