"""Each service's tables, and who writes them (design rule 2: no service
reads or writes another's tables).

| database       | tables from                               | written by                                        |
|----------------|-------------------------------------------|---------------------------------------------------|
| cases          | services/cases/adapters/orm.py            | the cases service; warmi assign-protocol, keys,   |
|                |                                           | audit, statistics (cases' own code)               |
| notifications  | services/notifications/adapters/orm.py    | the notifications service (from identity's and    |
|                |                                           | cases' events)                                    |
| referrals      | services/referrals/adapters/orm.py        | the referrals service; warmi create-provider      |
| identity       | services/identity/adapters/orm.py         | identity, in the gateway's process; warmi         |
|                |                                           | create-organization, create-user, users, tokens   |

The tests below check the table, not trust it: the migrations make exactly
the tables each service declares, no service's code imports another's
adapters or service layer, and each operators' command, run for real, writes
only the database of the service whose code it runs.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, inspect

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("cases", "notifications", "referrals", "identity")
# a process may host another service: the gateway hosts identity, and asks it who is calling
HOSTS = {"gateway": {"identity"}}


def _metadata(service: str):
    return importlib.import_module(f"services.{service}.adapters.orm").metadata


def test_each_database_holds_exactly_the_tables_its_service_declares(sqlite_engines):
    for service in SERVICES:
        present = set(inspect(sqlite_engines[service]).get_table_names()) - {"alembic_version"}
        assert present == set(_metadata(service).tables), service


def test_no_two_services_declare_the_same_table_name_by_accident():
    # the same name in two databases is fine (each keeps its own outbox); what
    # matters is that no code path reaches another service's: see below
    declared = {service: set(_metadata(service).tables) for service in SERVICES}
    assert all(tables for tables in declared.values())


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("service", SERVICES + ("gateway",))
def test_no_service_imports_another_services_code(service):
    allowed = {service} | HOSTS.get(service, set())
    wrong = []
    for path in sorted((ROOT / "services" / service).rglob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "services" and len(parts) > 1 and parts[1] not in allowed:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert wrong == []


class Writes:
    """Every INSERT, UPDATE or DELETE any engine of this process sends, by database file."""

    def __init__(self, urls: dict[str, str]):
        self.by_file = {url.rsplit("/", 1)[1]: service for service, url in urls.items()}
        self.seen: set[str] = set()

    def __call__(self, conn, cursor, statement, parameters, context, executemany):
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE"):
            database = conn.engine.url.database or ""
            self.seen.add(self.by_file.get(database.rsplit("/", 1)[-1], database))


def test_each_operators_command_writes_only_its_own_services_database(sqlite_database_urls, capsys):
    from warmi import admin
    from warmi.cli import main

    writes = Writes(sqlite_database_urls)
    event.listen(Engine, "before_cursor_execute", writes)
    try:
        def run(name, action, expected):
            writes.seen.clear()
            result = action()
            assert writes.seen == expected, f"{name} wrote {sorted(writes.seen)}, not only {sorted(expected)}"
            return result

        made = run("create-organization", lambda: admin.create_organization(
            code="CEC", name="Cooperativa", timezone_name="America/Lima", locale="es", president_name="Rosa",
            president_email="rosa@cec.test.invalid", focal_point_name="Ana"), {"identity"})
        lead = run("create-user", lambda: admin.create_user(
            org_code="CEC", roles=["case_lead", "president"], name="Lu", email="lu@cec.test.invalid", locale="es",
            supervises=[]), {"identity"})
        token = run("tokens issue", lambda: admin.issue_token(user_id=lead["id"], scope="read", days=3, label="x"),
                    {"identity"})
        run("tokens list", lambda: admin.list_tokens(org_code="CEC"), set())
        run("tokens revoke", lambda: admin.revoke_token(token["id"]), {"identity"})
        run("users deactivate", lambda: admin.deactivate_user(made["focal_point"]["id"]), {"identity"})
        run("create-provider", lambda: admin.create_provider(org_code="CEC", name="CEM Puno", kind="cem"),
            {"referrals"})
        # the cases service learns of the organisation from identity's event, as
        # the running service would, with its own code
        run("cases' projection", lambda: _project_into_cases(made["organization"]["id"]), {"cases"})
        assert run("assign-protocol", lambda: main(["assign-protocol", "--org", "CEC"]), {"cases"}) == 0
    finally:
        event.remove(Engine, "before_cursor_execute", writes)
        capsys.readouterr()


def _project_into_cases(organization_id: str) -> None:
    import json

    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from contracts.events import load_event
    from servicekit.config import database_url
    from servicekit.database import make_engine
    from services.cases.service_layer import handlers
    from services.cases.service_layer.unit_of_work import UnitOfWork

    identity_db = make_engine(database_url("identity"))
    with identity_db.connect() as conn:
        body = conn.execute(text("SELECT body FROM outbox WHERE routing_key = 'organization_registered'")).scalar()
    identity_db.dispose()
    event = load_event(json.loads(body), "organization_registered")
    assert str(event["organization_id"]) == organization_id
    cases_db = make_engine(database_url("cases"))
    with Session(cases_db) as session:
        assert handlers.project_organization(UnitOfWork(session), event)
    cases_db.dispose()
