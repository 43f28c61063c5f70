"""Operator commands that set up organisations and people.

Each step runs a service's own code against that service's own database;
nothing here reads one service's tables on behalf of another."""
from __future__ import annotations

from contextlib import contextmanager

from sqlalchemy.orm import Session

from servicekit.config import database_url
from servicekit.database import make_engine
from servicekit.migrations import MIGRATING, upgrade


def migrate_all() -> None:
    for service in MIGRATING:
        upgrade(service, database_url(service))


@contextmanager
def session_for(service: str):
    engine = make_engine(database_url(service))
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def create_organization(
    *, code: str, name: str, timezone_name: str, locale: str,
    president_name: str, president_email: str, focal_point_name: str,
) -> dict:
    from services.cases.service_layer import handlers as cases
    from services.cases.service_layer.unit_of_work import UnitOfWork as CasesUow
    from services.gateway import identity
    from services.notifications.domain.model import Recipient
    from services.notifications.service_layer import handlers as notifications
    from services.notifications.service_layer.unit_of_work import UnitOfWork as NotificationsUow

    _check_email(president_email)
    with session_for("gateway") as session:
        organization_id = identity.create_organization(
            session, code=code, name=name, timezone_name=timezone_name, locale=locale
        )
        president_id, president_token = identity.create_user(
            session, organization_id=organization_id, display_name=president_name, roles=["president"]
        )
        focal_id, focal_token = identity.create_user(
            session, organization_id=organization_id, display_name=focal_point_name, roles=["focal_point"]
        )
        # The gateway commits last: until it does no token works, and what the
        # other services already hold is keyed by ids nobody has been given.
        with session_for("cases") as cases_session:
            cases.register_organization(
                CasesUow(cases_session), organization_id=organization_id, code=code, timezone_name=timezone_name
            )
        with session_for("notifications") as n_session:
            uow = NotificationsUow(n_session)
            notifications.register_organization(uow, organization_id=organization_id, timezone_name=timezone_name)
            notifications.register_recipient(
                uow, Recipient(president_id, organization_id, "president", "email", president_email, locale)
            )
        session.commit()
    return {
        "organization": {"id": organization_id, "code": code},
        "president": {"id": president_id, "token": president_token},
        "focal_point": {"id": focal_id, "token": focal_token},
    }


def _check_email(address: str) -> None:
    from contracts.errors import InvalidInput

    if not address or "@" not in address or len(address) > 320 or any(c.isspace() for c in address):
        raise InvalidInput("not an e-mail address", {"president_email": ["not an e-mail address"]})
