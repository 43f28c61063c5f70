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


def _dead_letter_queues() -> list[str]:
    from servicekit.deadletters import handler_queues
    from warmi.registry import SERVICES, service_class

    return [q for name in SERVICES for q in handler_queues(service_class(name))]


def cmd_serve(args) -> int:
    from warmi.serve import serve

    serve(args.service)
    return 0


def cmd_run(args) -> int:
    from warmi.admin import migrate_all
    from warmi.supervisor import run

    _init_keys()
    migrate_all()
    return run()


def cmd_migrate(args) -> int:
    from warmi.admin import migrate_all

    migrate_all()
    print("databases are up to date")
    return 0


def _init_keys() -> None:
    from services.cases.adapters.crypto import new_key_file
    from servicekit.config import home

    if os.environ.get("CASES_ENCRYPTION_KEYS"):
        return
    path = Path(os.environ.get("CASES_ENCRYPTION_KEYS_FILE") or home() / "cases.keys")
    if new_key_file(path):
        print(f"created an encryption key for case fields in {path}; keep it safe and backed up")


def cmd_keys_init(args) -> int:
    _init_keys()
    return 0


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
        print(json.dumps({"error": {"code": err.code, "message": err.message, "fields": err.fields}}), file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    print("Tokens are shown once; hand each to its holder.", file=sys.stderr)
    return 0


def cmd_mail_sink(args) -> int:
    from servicekit.config import home
    from warmi.mailsink import run_sink

    run_sink(Path(args.dir) if args.dir else home() / "mail", port=args.port)
    return 0


def cmd_dead_letters(args) -> int:
    from servicekit.deadletters import list_dead_letters, replay

    queues = _dead_letter_queues()
    if args.action == "list":
        letters = list_dead_letters(_amqp_uri(), queues)
        for letter in letters:
            print(json.dumps(letter.__dict__))
        print(f"{len(letters)} dead letter(s)", file=sys.stderr)
    else:
        count = replay(_amqp_uri(), queues, message_id=args.id)
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

    k = sub.add_parser("keys", help="encryption keys of case fields")
    k.add_argument("action", choices=["init"])
    k.set_defaults(fn=cmd_keys_init)

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

    d = sub.add_parser("dead-letters", help="events that exhausted their retries")
    d.add_argument("action", choices=["list", "replay"])
    d.add_argument("--id", default=None, help="replay only the message with this id")
    d.set_defaults(fn=cmd_dead_letters)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
