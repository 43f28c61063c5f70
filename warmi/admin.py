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


def organization_id_of(code: str) -> str:
    """The id of the organisation with this code, as the gateway knows it."""
    from contracts.errors import InvalidInput
    from services.gateway import identity

    with session_for("gateway") as session:
        organization_id = identity.organization_by_code(session, code)
    if organization_id is None:
        raise InvalidInput("unknown organisation", {"org": [f"no organisation with code {code}"]})
    return organization_id


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


def _check_email(address: str, field: str = "president_email") -> None:
    from contracts.errors import InvalidInput

    if not address or "@" not in address or len(address) > 320 or any(c.isspace() for c in address):
        raise InvalidInput("not an e-mail address", {field: ["not an e-mail address"]})


def create_user(*, org_code: str, roles: list[str], name: str, email: str | None, locale: str,
                supervises: list[str]) -> dict:
    """A user of an organisation with a fresh token; with an e-mail address,
    also a recipient of the notifications for her first role."""
    from contracts.errors import InvalidInput
    from services.gateway import identity
    from services.notifications.domain.model import Recipient
    from services.notifications.service_layer import handlers as notifications
    from services.notifications.service_layer.unit_of_work import UnitOfWork as NotificationsUow

    if email is not None:
        _check_email(email, "email")
    with session_for("gateway") as session:
        organization_id = identity.organization_by_code(session, org_code)
        if organization_id is None:
            raise InvalidInput("unknown organisation", {"org": ["no organisation with this code"]})
        supervised = []
        for code in supervises:
            supervised_id = identity.organization_by_code(session, code)
            if supervised_id is None:
                raise InvalidInput("unknown organisation", {"supervises": [f"no organisation with code {code}"]})
            supervised.append(supervised_id)
        if supervised and "supervisor" not in roles:
            raise InvalidInput("only a supervisor supervises", {"supervises": ["add the supervisor role"]})
        user_id, token = identity.create_user(session, organization_id=organization_id, display_name=name, roles=roles)
        for supervised_id in supervised:
            identity.add_supervision(session, user_id, supervised_id)
        if email is not None:
            with session_for("notifications") as n_session:
                notifications.register_recipient(
                    NotificationsUow(n_session), Recipient(user_id, organization_id, roles[0], "email", email, locale)
                )
        session.commit()
    return {"id": user_id, "organization_id": organization_id, "roles": sorted(set(roles)), "token": token}



def create_provider(*, org_code: str, name: str, kind: str) -> dict:
    """A provider in the referrals service's directory; its registration
    reaches the cases service as an event."""
    from services.referrals.service_layer import handlers as referrals

    organization_id = organization_id_of(org_code)
    with session_for("referrals") as session:
        provider_id = referrals.register_provider(session, organization_id=organization_id, name=name, kind=kind)
    return {"id": provider_id, "organization_id": organization_id, "kind": kind}
