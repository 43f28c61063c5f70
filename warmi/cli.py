"""The ``warmi`` command for operators. ``warmi --help`` lists what it does."""
from __future__ import annotations

import argparse
import getpass
import json
import os
import re
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

    _init_audit_keys()
    _init_caller_keys()
    _init_ack_keys()
    if os.environ.get("CASES_ENCRYPTION_KEYS"):
        return
    path = Path(os.environ.get("CASES_ENCRYPTION_KEYS_FILE") or home() / "cases.keys")
    if new_key_file(path):
        print(f"created an encryption key for case fields in {path}; keep it safe and backed up")


def _init_ack_keys() -> None:
    """The key that signs the acknowledgement links of urgent notifications."""
    import base64
    import secrets

    from servicekit.config import home
    from servicekit.keyfiles import create_key_file

    if os.environ.get("ACK_KEYS"):
        return
    path = Path(os.environ.get("ACK_KEYS_FILE") or home() / "ack.keys")
    if create_key_file(path, f"1:{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip('=')}"):
        print(f"created the key that signs acknowledgement links in {path}")


def _init_caller_keys() -> None:
    """The key the gateway signs callers with and the services check them by
    (servicekit.callers): one file every process of this machine reads."""
    from servicekit.callers import ensure_key_file
    from servicekit.config import home

    if os.environ.get("CALLER_KEYS"):
        return
    path = Path(os.environ.get("CALLER_KEYS_FILE") or home() / "caller.keys")
    if ensure_key_file(path):
        print(f"created the key that vouches for callers between the services in {path}")


def cmd_create_organization(args) -> int:
    from contracts.errors import WarmiError
    from warmi.admin import create_organization, migrate_all

    migrate_all()
    try:
        result = create_organization(
            code=args.code, name=args.name, timezone_name=args.timezone, locale=args.locale,
            president_name=args.president_name, president_email=args.president_email,
            focal_point_name=args.focal_point_name, country=args.country, president_phone=args.president_phone,
        )
    except WarmiError as err:
        return _fail(err)
    _told(_await_services([
        ("cases", "knows_organization", (result["organization"]["id"],)),
        ("notifications", "knows_member", (result["president"]["id"], 1)),
        ("notifications", "knows_member", (result["focal_point"]["id"], 1)),
    ]), "the organisation and its people")
    print(json.dumps(result, indent=2))
    print("Tokens are shown once; hand each to its holder.", file=sys.stderr)
    return 0


def _await_services(checks: list, timeout: float = 10.0) -> bool:
    """Wait until the running services have what identity's events just told
    them (``checks``: (service, method, args) answering True once they have),
    so that the next step (opening a case) finds them ready. False, without
    waiting long, when the services do not run."""
    import time

    from nameko.exceptions import RpcTimeout, UnknownService
    from nameko.standalone.rpc import ClusterRpcProxy

    deadline = time.monotonic() + timeout
    try:
        with ClusterRpcProxy({"AMQP_URI": _amqp_uri()}, timeout=2) as rpc:
            pending = list(checks)
            while pending:
                left = []
                for service, method, args in pending:
                    try:
                        known = getattr(getattr(rpc, service), method)(*args)
                    except UnknownService:
                        return False  # that service has never run on this broker
                    except RpcTimeout:
                        known = False
                    if not known:
                        left.append((service, method, args))
                pending = left
                if pending:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.2)
    except Exception:  # no broker: nothing runs to be told
        return False
    return True


def _told(known: bool, what: str) -> None:
    if known:
        print(f"The services know {what}.", file=sys.stderr)
    else:
        print(f"The services did not confirm that they know {what}: they learn of it from identity's events "
              "as soon as the gateway and they run.", file=sys.stderr)


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
            supervises=[c for c in (args.supervises or "").split(",") if c], phone=args.phone,
            scope=args.scope, days=args.days, whatsapp=args.whatsapp,
        )
    except WarmiError as err:
        return _fail(err)
    _told(_await_services([("notifications", "knows_member", (result["id"], 1))]), "her")
    print(json.dumps(result, indent=2))
    print("The token is shown once; hand it to its holder.", file=sys.stderr)
    return 0


def cmd_users(args) -> int:
    from contracts.errors import WarmiError
    from warmi.admin import deactivate_user, migrate_all

    migrate_all()
    try:
        result = deactivate_user(args.user)
    except WarmiError as err:
        return _fail(err)
    print(json.dumps(result, indent=2))
    return 0


def cmd_tokens(args) -> int:
    """Tokens: issue one (its secret shown once), list them (never a
    secret), revoke one."""
    from contracts.errors import InvalidInput, WarmiError
    from warmi import admin

    admin.migrate_all()
    try:
        if args.action == "issue":
            if not args.user:
                raise InvalidInput("say whose token", {"user": ["required"]})
            result = admin.issue_token(user_id=args.user, scope=args.scope, days=args.days, label=args.label)
            print(json.dumps(result, indent=2))
            print("The token is shown once; hand it to its holder.", file=sys.stderr)
        elif args.action == "list":
            rows = admin.list_tokens(user_id=args.user, org_code=args.org)
            print(json.dumps([{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
                              for row in rows], indent=2))
        else:
            if not args.id:
                raise InvalidInput("say which token", {"id": ["required"]})
            print(json.dumps(admin.revoke_token(args.id), indent=2))
    except WarmiError as err:
        return _fail(err)
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


def _init_audit_keys() -> None:
    """The audit trail's key (servicekit.audit), unless AUDIT_KEYS gives it."""
    from servicekit.audit import key_file, new_key_file

    if os.environ.get("AUDIT_KEYS"):
        return
    path = key_file()
    if new_key_file(path):
        print(f"created the audit trail's key in {path}; keep a copy elsewhere: "
              "without it the trail cannot be verified")


_OPERATOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


def _operator(args) -> str:
    """Who runs the command: ``--by``, else the user of the operating system."""
    from contracts.errors import InvalidInput

    by = getattr(args, "by", None)
    if by is None:
        try:
            by = getpass.getuser()
        except Exception:  # no name for this uid (a container)
            by = f"uid-{os.getuid()}"
    if not _OPERATOR.fullmatch(by):
        raise InvalidInput("say who you are with letters, digits and . _ @ + - (at most 64)",
                           {"by": ["letters, digits and . _ @ + - only, at most 64"]})
    return by


def _audited(args, action: str, *, organization_id: str | None = None, **facts) -> None:
    """Record an operator's command in the cases trail, before it runs: who
    and what (counts, message or key ids), never survivor data. A command
    that cannot be recorded does not run (AuditKeyError, InvalidInput)."""
    from servicekit.audit import AuditKeys
    from servicekit.config import database_url
    from servicekit.migrations import upgrade
    from services.cases.domain.audit import operator_detail
    from services.cases.service_layer.unit_of_work import UnitOfWork, cases_audit_trail
    from warmi.admin import session_for

    operator = _operator(args)
    trail = cases_audit_trail(AuditKeys.configured())
    upgrade("cases", database_url("cases"))
    with session_for("cases") as session:
        uow = UnitOfWork(session, audit_trail=trail)
        uow.audit_operator(operator=operator, action=action, organization_id=organization_id,
                           detail=operator_detail(**facts))
        uow.commit()


def _refused(err) -> int:
    """An operator's command that could not be recorded, so did not run."""
    from contracts.errors import WarmiError

    if isinstance(err, WarmiError):
        return _fail(err)
    print(f"not done: it could not be recorded in the audit trail ({err})", file=sys.stderr)
    return 2


def cmd_keys(args) -> int:
    from cryptography.fernet import Fernet

    from contracts.errors import WarmiError
    from servicekit.audit import AuditKeyError
    from services.cases.adapters.crypto import KeyRing
    from services.cases.service_layer import keys
    from warmi.admin import session_for

    if args.action == "init":
        _init_keys()
    try:
        _audited(args, f"keys_{args.action}")
    except (AuditKeyError, WarmiError) as err:
        return _refused(err)
    if args.action == "init":
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


def _audit_trails(keys) -> list:
    """``(name, database service, AuditTrail)`` of every trail `warmi audit`
    verifies and anchors: cases' and identity's, each in its own database."""
    from servicekit.audit import AuditTrail
    from services.cases.service_layer.unit_of_work import cases_audit_trail
    from services.identity.adapters import orm as identity_orm

    return [("cases", "cases", cases_audit_trail(keys)),
            ("identity", "identity", AuditTrail("identity", identity_orm.audit, keys))]


def _anchor_text(value: str) -> str:
    """``--anchor``: the anchor itself (JSON), or a file holding it."""
    if value.lstrip().startswith("{"):
        return value
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"no anchor file {value}")
    return path.read_text()


def cmd_audit(args) -> int:
    """verify [--anchor A]: every entry's MAC and link, every chain against
    its head and, with an anchor, against the anchored heads. anchor: the
    heads of every trail, signed, once they verify. add-key: a new newest
    audit key, which signs what follows (the old ones keep verifying)."""
    from contracts.errors import WarmiError
    from servicekit.audit import (
        AnchorError, AuditKeyError, AuditKeys, add_key, generate_key, key_file, read_anchor, sign_anchor,
    )
    from servicekit.config import database_url
    from servicekit.migrations import upgrade
    from warmi.admin import session_for

    if args.action == "add-key":
        if os.environ.get("AUDIT_KEYS"):
            print("audit keys come from AUDIT_KEYS: put a new key first there (keep the old ones), e.g. "
                  "one `python -c 'from servicekit.audit import generate_key; print(generate_key())'` prints",
                  file=sys.stderr)
            return 2
        path, key = key_file(), generate_key()
        key_id = key.split(":", 1)[0]
        try:  # recorded with the key in use so far, before the new one signs anything
            _audited(args, "audit_key_add", key_id=key_id)
        except (AuditKeyError, WarmiError) as err:
            return _refused(err)
        add_key(path, key)
        print(f"added audit key {key_id} to {path}; it signs new entries. Keep every older key: "
              "the entries signed with it are verified with it")
        return 0
    try:
        keys = AuditKeys.configured()
    except AuditKeyError as err:
        print(str(err), file=sys.stderr)
        return 2
    anchor = None
    if args.action == "verify" and args.anchor:
        try:
            anchor = read_anchor(keys, _anchor_text(args.anchor))
        except (AnchorError, OSError) as err:
            print(f"cannot verify against this anchor: {err}", file=sys.stderr)
            return 2
    problems, heads = [], {}
    trails = _audit_trails(keys)
    for _, service, _ in trails:  # a trail not made yet is an empty one
        upgrade(service, database_url(service))
    known = {name for name, _, _ in trails}
    for name in sorted(set(anchor.trails) - known if anchor else ()):
        problems.append({"trail": name, "problem": "the anchor holds a trail this installation does not know"})
    for name, service, trail in trails:
        with session_for(service) as session:
            found, heads[name] = trail.verify_and_heads(session, anchor.trails.get(name) if anchor else None)
        problems += [{"trail": name, **p.as_dict()} for p in found]
    for problem in problems:
        print(json.dumps(problem))
    if problems:
        removed = any("removed" in p["problem"] for p in problems)
        print("the audit trail was altered" + (": entries were removed" if removed else "")
              + ("; not anchored" if args.action == "anchor" else ""), file=sys.stderr)
        return 1
    if args.action == "anchor":
        print(sign_anchor(keys, heads))
        print(f"the heads of {sum(len(h) for h in heads.values())} chain(s), signed with audit key "
              f"{keys.newest_id}: keep this anchor where whoever administers the databases cannot "
              "change it, and verify with `warmi audit verify --anchor <file>`", file=sys.stderr)
        return 0
    print("the audit trail is intact" + (f", and holds every entry of the anchor of {anchor.at}" if anchor else ""))
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
    from servicekit.audit import AuditKeyError

    try:  # the export is recorded before anything is shown
        _audited(args, "statistics_export", organization_id=organization_id, recount=bool(args.recount),
                 **{k: v for k, v in vars(args).items() if k.startswith(("from_", "to_"))})
    except (AuditKeyError, WarmiError) as err:
        return _refused(err)
    with session_for("cases") as session:
        if args.recount:
            from services.cases.adapters import cells

            cells.recount(session)
            session.commit()
        try:
            figures = queries.statistics(UnitOfWork(session), caller,
                                         {"from": args.from_quarter, "to": args.to_quarter})
        except WarmiError as err:
            return _fail(err)
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


def cmd_provider_sink(args) -> int:
    from servicekit.config import home
    from warmi.providersink import run_provider_sink

    run_provider_sink(Path(args.folder) if args.folder else home() / "provider-sink", port=args.port)
    return 0


def cmd_dead_letters(args) -> int:
    from contracts.errors import WarmiError
    from servicekit.audit import AuditKeyError
    from servicekit.deadletters import list_dead_letters, replay

    try:  # in the cases trail, whichever service's queue the letters wait in
        _audited(args, f"dead_letters_{args.action}", message_id=args.id)
    except (AuditKeyError, WarmiError) as err:
        return _refused(err)
    if args.action == "list":
        letters = list_dead_letters(_amqp_uri())
        for letter in letters:
            print(json.dumps(letter.__dict__))
        print(f"{len(letters)} dead letter(s)", file=sys.stderr)
    else:
        count = replay(_amqp_uri(), message_id=args.id)
        print(f"replayed {count} dead letter(s)")
    return 0


_BY = "who runs it, for the audit trail (default: the operating system's user)"


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
    k.add_argument("--by", default=None, help=_BY)
    k.set_defaults(fn=cmd_keys)

    u = sub.add_parser("create-user", help="a person of an organisation, with a token")
    u.add_argument("--org", required=True, help="the organisation's code, e.g. CEC")
    u.add_argument("--role", required=True, action="append",
                   choices=["focal_point", "case_lead", "president", "supervisor", "programme", "operator", "admin"])
    u.add_argument("--name", required=True)
    u.add_argument("--email", default=None, help="work address: notifications, and the console's login")
    u.add_argument("--phone", default=None, help="work phone in E.164 form, e.g. +51987654321")
    u.add_argument("--whatsapp", action="store_true",
                   help="she agreed to be written to on WhatsApp (her opt-in, recorded with its time)")
    u.add_argument("--locale", default="es", choices=["es", "en"])
    u.add_argument("--supervises", default=None, help="codes of the organisations a supervisor supervises")
    u.add_argument("--scope", default="read_write", choices=["read", "read_write"], help="what her token allows")
    u.add_argument("--days", type=float, default=None, help="days until her token expires (default 90)")
    u.set_defaults(fn=cmd_create_user)

    us = sub.add_parser("users", help="people: deactivate one (every token she holds stops working)")
    us.add_argument("action", choices=["deactivate"])
    us.add_argument("--user", required=True, help="the person's id")
    us.set_defaults(fn=cmd_users)

    t = sub.add_parser("tokens", help="API tokens: issue (shown once), list (never a secret), revoke")
    t.add_argument("action", choices=["issue", "list", "revoke"])
    t.add_argument("--user", default=None, help="the holder's id (issue; list filters by it)")
    t.add_argument("--org", default=None, help="list: only this organisation's tokens (its code)")
    t.add_argument("--id", default=None, help="revoke: the token's id, as list shows it")
    t.add_argument("--scope", default="read_write", choices=["read", "read_write"])
    t.add_argument("--days", type=float, default=None, help="days until it expires (default 90, at most 366)")
    t.add_argument("--label", default="api", help="what it is for, to recognise it in the list")
    t.set_defaults(fn=cmd_tokens)

    pr = sub.add_parser("create-provider", help="a local service provider survivors can be referred to")
    pr.add_argument("--org", required=True)
    pr.add_argument("--name", required=True)
    pr.add_argument("--kind", required=True,
                    choices=["health_post", "cem", "police", "prosecutor", "legal_aid", "psychosocial", "shelter",
                             "other"])
    pr.set_defaults(fn=cmd_create_provider)

    a = sub.add_parser("audit", help="the audit trail: verify it (against an anchor), anchor its heads, add a key")
    a.add_argument("action", choices=["verify", "anchor", "add-key"])
    a.add_argument("--anchor", default=None, help="verify: an anchor `warmi audit anchor` printed, or its file")
    a.add_argument("--by", default=None, help=_BY)
    a.set_defaults(fn=cmd_audit)

    st = sub.add_parser("statistics", help="anonymised figures of an organisation, as CSV")
    st.add_argument("--org", required=True)
    st.add_argument("--from", dest="from_quarter", default=None, help="first calendar quarter, e.g. 2026-Q1")
    st.add_argument("--to", dest="to_quarter", default=None, help="last calendar quarter, e.g. 2026-Q4")
    st.add_argument("--recount", action="store_true", help="rebuild the counts from the cases first")
    st.add_argument("--by", default=None, help=_BY)
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
    o.add_argument("--country", default=None, help="ISO 3166 code, e.g. PE; by default the time zone's country")
    o.add_argument("--president-phone", default=None, help="E.164, e.g. +51987654321")
    o.set_defaults(fn=cmd_create_organization)

    m = sub.add_parser("mail-sink", help="a local SMTP server that writes each message to a folder")
    m.add_argument("--dir", default=None)
    m.add_argument("--port", type=int, default=8025)
    m.set_defaults(fn=cmd_mail_sink)

    ps = sub.add_parser("provider-sink", help="a local stand-in for the SMS, WhatsApp and webhook providers "
                                              "that writes each message to a folder")
    ps.add_argument("--folder", default=None, help="default: $WARMI_HOME/provider-sink")
    ps.add_argument("--port", type=int, default=8026)
    ps.set_defaults(fn=cmd_provider_sink)

    d = sub.add_parser("dead-letters", help="events that exhausted their retries, could not be handled, or found no queue")
    d.add_argument("action", choices=["list", "replay"])
    d.add_argument("--id", default=None, help="replay only the message with this id")
    d.add_argument("--by", default=None, help=_BY)
    d.set_defaults(fn=cmd_dead_letters)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
