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
    """The id of the organisation with this code, as identity knows it."""
    from contracts.errors import InvalidInput
    from services.identity.service_layer import handlers as identity

    with session_for("identity") as session:
        organization_id = identity.organization_id_of(session, code)
    if organization_id is None:
        raise InvalidInput("unknown organisation", {"org": [f"no organisation with code {code}"]})
    return organization_id


def country_of(timezone_name: str) -> str | None:
    """The country of a time zone, from the system's zone table, if it names one."""
    for table in ("/usr/share/zoneinfo/zone1970.tab", "/usr/share/zoneinfo/zone.tab"):
        try:
            with open(table) as fh:
                for line in fh:
                    parts = line.split("\t")
                    if not line.startswith("#") and len(parts) >= 3 and parts[2].strip() == timezone_name:
                        countries = parts[0].split(",")
                        return countries[0] if len(countries) == 1 else None
        except OSError:
            continue
    return None


def create_organization(
    *, code: str, name: str, timezone_name: str, locale: str,
    president_name: str, president_email: str, focal_point_name: str, country: str | None = None,
    president_phone: str | None = None, overseen_by: list[str] = (),
) -> dict:
    """An organisation with its president and a focal point, each with a
    token. Only identity's database is written: the cases and notifications
    services learn of the organisation and its people from identity's
    events, within moments once the gateway (which hosts identity) runs."""
    from contracts.errors import InvalidInput
    from services.identity.adapters import audit
    from services.identity.service_layer import handlers as identity

    country = country or country_of(timezone_name)
    if country is None:
        raise InvalidInput("say which country", {"country": ["required: two capital letters, e.g. PE or CO"]})
    with session_for("identity") as session:
        organization_id = identity.register_organization(
            session, code=code, name=name, country=country, timezone_name=timezone_name, language=locale,
            overseen_by=list(overseen_by),
        )
        president_id = identity.add_member(
            session, organization_id=organization_id, name=president_name, roles=["president"], language=locale,
            email=president_email, phone=president_phone,
        )
        focal_id = identity.add_member(
            session, organization_id=organization_id, name=focal_point_name, roles=["focal_point"], language=locale,
        )
        president_token_id, president_token, _ = identity.issue_token(
            session, president_id, label="created with the organisation")
        focal_token_id, focal_token, _ = identity.issue_token(session, focal_id, label="created with the organisation")
        audit.record(session, "organization_registered", organization_id=organization_id)
        for member_id, token_id in ((president_id, president_token_id), (focal_id, focal_token_id)):
            audit.record(session, "member_added", organization_id=organization_id, member_id=member_id)
            audit.record(session, "token_issued", organization_id=organization_id, member_id=member_id,
                         token_id=token_id, detail="scope=read_write")
        session.commit()
    return {
        "organization": {"id": organization_id, "code": code},
        "president": {"id": president_id, "token": president_token},
        "focal_point": {"id": focal_id, "token": focal_token},
    }


def create_user(*, org_code: str, roles: list[str], name: str, email: str | None, locale: str,
                supervises: list[str], phone: str | None = None, scope: str = "read_write",
                days: float | None = None, whatsapp: bool = False) -> dict:
    """A person of an organisation with a fresh token. Notifications learn of
    her (every role, her contact points, her supervisions, her WhatsApp
    opt-in: ``whatsapp``, given to the operator) from identity's events."""
    from contracts.errors import InvalidInput
    from services.identity.adapters import audit
    from services.identity.service_layer import handlers as identity

    with session_for("identity") as session:
        organization_id = identity.organization_id_of(session, org_code)
        if organization_id is None:
            raise InvalidInput("unknown organisation", {"org": ["no organisation with this code"]})
        user_id = identity.add_member(
            session, organization_id=organization_id, name=name, roles=roles, language=locale, email=email,
            phone=phone, supervises=list(supervises), whatsapp_opt_in=whatsapp,
        )
        token_id, token, expires_at = identity.issue_token(session, user_id, scope=scope, days=days)
        audit.record(session, "member_added", organization_id=organization_id, member_id=user_id,
                     detail="roles=" + ",".join(sorted(set(roles))))
        if whatsapp:
            audit.record(session, "notification_settings_changed", organization_id=organization_id,
                         member_id=user_id, detail="changed=whatsapp_opt_in")
        audit.record(session, "token_issued", organization_id=organization_id, member_id=user_id, token_id=token_id,
                     detail=f"scope={scope}")
        session.commit()
    return {"id": user_id, "organization_id": organization_id, "roles": sorted(set(roles)), "token": token,
            "token_id": token_id, "expires_at": expires_at.isoformat()}


def deactivate_user(user_id: str) -> dict:
    from services.identity.adapters import audit
    from services.identity.service_layer import handlers as identity

    with session_for("identity") as session:
        revoked = identity.deactivate_member(session, user_id)
        audit.record(session, "member_deactivated", member_id=user_id, detail=f"tokens_revoked={revoked}")
        session.commit()
    return {"id": user_id, "active": False, "tokens_revoked": revoked}


def issue_token(*, user_id: str, scope: str, days: float | None, label: str) -> dict:
    from services.identity.adapters import audit
    from services.identity.service_layer import handlers as identity

    with session_for("identity") as session:
        token_id, token, expires_at = identity.issue_token(session, user_id, scope=scope, days=days, label=label)
        audit.record(session, "token_issued", member_id=user_id, token_id=token_id, detail=f"scope={scope}")
        session.commit()
    return {"id": token_id, "user_id": user_id, "scope": scope, "expires_at": expires_at.isoformat(), "token": token}


def list_tokens(*, user_id: str | None = None, org_code: str | None = None) -> list[dict]:
    """Every token's id, holder, scope, expiry and last use: never a secret."""
    from services.identity.service_layer import handlers as identity

    organization_id = organization_id_of(org_code) if org_code else None
    with session_for("identity") as session:
        return identity.list_tokens(session, member_id=user_id, organization_id=organization_id)


def revoke_token(token_id: str) -> dict:
    from services.identity.adapters import audit
    from services.identity.service_layer import handlers as identity

    with session_for("identity") as session:
        was_live = identity.revoke_token(session, token_id)
        audit.record(session, "token_revoked", token_id=token_id)
        session.commit()
    return {"id": token_id, "revoked": True, "was_live": was_live}


def create_provider(*, org_code: str, name: str, kind: str) -> dict:
    """A provider in the referrals service's directory; its registration
    reaches the cases service as an event."""
    from services.referrals.service_layer import handlers as referrals

    organization_id = organization_id_of(org_code)
    with session_for("referrals") as session:
        provider_id = referrals.register_provider(session, organization_id=organization_id, name=name, kind=kind)
    return {"id": provider_id, "organization_id": organization_id, "kind": kind}
