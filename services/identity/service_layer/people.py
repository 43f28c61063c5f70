"""What identity answers over the HTTP API, for the gateway that hosts it:
who am I, a login for the console, the organisation's people (an admin adds,
edits, sets roles and deactivates them; a president reads them), one's own
tokens, and one's own notification settings. Every function checks the
principal itself (the gateway's route table is the first check, this the
second), works in the caller's session, records what it changed in
identity's audit trail and commits.

An admin manages the people of her own organisation and never sees a case.
She cannot issue a token for someone else (that would let her act as them):
a person issues her own tokens, and deactivating her revokes them all. Nor
does she set anyone's notification settings: the WhatsApp opt-in is the
person's own consent, and so are her quiet hours and channels.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from marshmallow import RAISE, Schema, ValidationError, fields, validate
from sqlalchemy import select
from sqlalchemy.orm import Session

from contracts.errors import Forbidden, InvalidInput, NotFound, Stale
from contracts.fields import StrictBoolean, StrictInteger, StrictList, StrictString
from contracts.identity_events import CLOCK, NOTIFICATION_KINDS, PERSONAL_CHANNELS
from contracts.rpc import ROLES
from services.identity.adapters import audit, orm
from services.identity.domain import model
from services.identity.domain.model import Principal
from services.identity.service_layer import handlers

LANGUAGES = model.LANGUAGES


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class LoginSchema(_Strict):
    email = StrictString(required=True, validate=validate.Length(min=1, max=320))
    password = StrictString(required=True, validate=validate.Length(min=1, max=200))


class NewPersonSchema(_Strict):
    name = StrictString(required=True, validate=validate.Length(min=1, max=200))
    email = StrictString(load_default=None, allow_none=True, validate=validate.Length(max=320))
    phone = StrictString(load_default=None, allow_none=True, validate=validate.Length(max=16))
    language = StrictString(required=True, validate=validate.OneOf(LANGUAGES))
    roles = StrictList(StrictString(validate=validate.OneOf(ROLES)), required=True, max_items=len(ROLES))


class PersonChangeSchema(_Strict):
    name = StrictString(validate=validate.Length(min=1, max=200))
    email = StrictString(validate=validate.Length(max=320))
    phone = StrictString(validate=validate.Length(max=16))
    language = StrictString(validate=validate.OneOf(LANGUAGES))


class RolesSchema(_Strict):
    roles = StrictList(StrictString(validate=validate.OneOf(ROLES)), required=True, max_items=len(ROLES))


class NewTokenSchema(_Strict):
    scope = StrictString(load_default="read_write", validate=validate.OneOf(model.SCOPES))
    days = StrictInteger(load_default=None, allow_none=True, validate=validate.Range(min=1, max=366))
    label = StrictString(load_default="api", validate=validate.Length(min=1, max=100))


class QuietHoursSchema(_Strict):
    start = StrictString(required=True, validate=validate.Regexp(CLOCK, error="A time of day, HH:MM."))
    end = StrictString(required=True, validate=validate.Regexp(CLOCK, error="A time of day, HH:MM."))


class DigestScheduleSchema(_Strict):
    weekday = StrictInteger(required=True, validate=validate.Range(min=0, max=6),
                            metadata={"description": "0 = Monday"})
    hour = StrictInteger(required=True, validate=validate.Range(min=0, max=23))


# per notification kind, the channels it reaches her on: one optional field a kind
ChannelPreferencesSchema = _Strict.from_dict({
    kind: StrictList(StrictString(validate=validate.OneOf(PERSONAL_CHANNELS)), max_items=len(PERSONAL_CHANNELS))
    for kind in NOTIFICATION_KINDS
}, name="ChannelPreferencesSchema")


class NotificationSettingsSchema(_Strict):
    """Every setting, each time: what is sent replaces what there was."""

    whatsapp_opt_in = StrictBoolean(required=True, metadata={
        "description": "you agree to be written to on WhatsApp"})
    quiet_hours = fields.Nested(QuietHoursSchema, required=True, allow_none=True, metadata={
        "description": "in your organisation's time zone, only critical messages reach you (start and end "
                       "differ; 21:00 to 07:00 runs over midnight); null: none"})
    digest = fields.Nested(DigestScheduleSchema, required=True, allow_none=True, metadata={
        "description": "when your digest comes; null: your organisation's default"})
    preferences = fields.Nested(ChannelPreferencesSchema, required=True, metadata={
        "description": "per kind, the channels it reaches you on (an empty list: none unless critical; whatsapp "
                       "needs the opt-in); a kind not named: the rules decide"})


class NotificationSettingsViewSchema(Schema):
    whatsapp_opt_in = fields.Boolean()
    whatsapp_opted_in_at = fields.AwareDateTime(allow_none=True)
    quiet_hours = fields.Nested(QuietHoursSchema, allow_none=True)
    digest = fields.Nested(DigestScheduleSchema, allow_none=True)
    preferences = fields.Nested(ChannelPreferencesSchema)
    timezone = fields.String(metadata={"description": "your organisation's, of the quiet hours and the digest"})
    revision = fields.Integer()


class PersonViewSchema(Schema):
    id = fields.String()
    organization_id = fields.String()
    name = fields.String()
    email = fields.String(allow_none=True)
    phone = fields.String(allow_none=True)
    language = fields.String()
    roles = fields.List(fields.String())
    active = fields.Boolean()
    supervised_organization_ids = fields.List(fields.String())
    revision = fields.Integer()


class MeSchema(PersonViewSchema):
    scope = fields.String()


class PeopleSchema(Schema):
    items = fields.List(fields.Nested(PersonViewSchema))


class TokenViewSchema(Schema):
    id = fields.String()
    scope = fields.String()
    label = fields.String()
    created_at = fields.AwareDateTime()
    expires_at = fields.AwareDateTime()
    last_used_at = fields.AwareDateTime(allow_none=True)
    revoked_at = fields.AwareDateTime(allow_none=True)


class TokensSchema(Schema):
    items = fields.List(fields.Nested(TokenViewSchema))


class IssuedTokenSchema(TokenViewSchema):
    token = fields.String(metadata={"description": "the secret, shown this once"})


class SessionSchema(Schema):
    token = fields.String(metadata={"description": "a read-write token for this console session"})
    expires_at = fields.AwareDateTime()
    person = fields.Nested(MeSchema)


def _load(schema: Schema, data, partial: bool = False) -> dict:
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", {"_schema": ["expected an object"]})
    try:
        return schema.load(data, partial=partial)
    except ValidationError as err:
        messages = err.messages if isinstance(err.messages, dict) else {"_schema": list(err.messages)}
        raise InvalidInput("some fields are not valid", {str(k): v for k, v in messages.items()}) from None


_LOGIN, _NEW, _CHANGE, _ROLES, _TOKEN = LoginSchema(), NewPersonSchema(), PersonChangeSchema(), RolesSchema(), \
    NewTokenSchema()
_SETTINGS = NotificationSettingsSchema()


def _view(session: Session, member_id: str) -> dict:
    organization_id, state = handlers.member_state(session, member_id)
    return {"id": state["member_id"], "organization_id": organization_id, "name": state["name"],
            "email": state["email"], "phone": state["phone"], "language": state["language"],
            "roles": state["roles"], "active": state["active"],
            "supervised_organization_ids": state["supervised_organization_ids"], "revision": state["revision"]}


def _admin(principal: Principal) -> None:
    if "admin" not in principal.roles:
        raise Forbidden("only an admin manages people")


def _own(session: Session, principal: Principal, member_id: str) -> dict:
    """A person of the principal's organisation; of any other, not found."""
    row = session.execute(select(orm.people.c.organization_id).where(orm.people.c.id == member_id)).first()
    if row is None or row.organization_id != principal.organization_id:
        raise NotFound("no such person")
    return _view(session, member_id)


def _check_revision(person: dict, expected: int) -> None:
    if expected != person["revision"]:
        raise Stale("the person was changed meanwhile; read her again",
                    {"If-Match": [f"the person is at revision {person['revision']}"]},
                    current_version=person["revision"])


# -- who am I, and a console login ----------------------------------------------

def me(session: Session, principal: Principal) -> dict:
    return {**_view(session, principal.user_id), "scope": principal.scope}


def login(session: Session, body, address: str, now: datetime | None = None) -> dict:
    data = _load(_LOGIN, body)
    try:
        token, principal = handlers.login(session, email=data["email"], password=data["password"],
                                          address=address or "unknown", now=now)
    except handlers.LoginRefused:
        session.commit()  # the failure counts
        raise
    expires = session.execute(select(orm.api_tokens.c.expires_at).where(
        orm.api_tokens.c.id == principal.token_id)).scalar()
    audit.record(session, "login", actor=principal.user_id, member_id=principal.user_id,
                 token_id=principal.token_id)
    session.commit()
    return {"token": token, "expires_at": expires, "person": me(session, principal)}


# -- the organisation's people ------------------------------------------------------

def list_people(session: Session, principal: Principal) -> dict:
    if not {"admin", "president"} & set(principal.roles):
        raise Forbidden("only an admin or the president sees the organisation's people")
    ids = session.execute(select(orm.people.c.id).where(orm.people.c.organization_id == principal.organization_id)
                          .order_by(orm.people.c.name, orm.people.c.id)).scalars().all()
    return {"items": [_view(session, i) for i in ids]}


def get_person(session: Session, principal: Principal, member_id: str) -> dict:
    if not {"admin", "president"} & set(principal.roles):
        raise Forbidden("only an admin or the president sees the organisation's people")
    return _own(session, principal, member_id)


def add_person(session: Session, principal: Principal, body) -> dict:
    _admin(principal)
    data = _load(_NEW, body)
    member_id = handlers.add_member(session, organization_id=principal.organization_id, name=data["name"],
                                    roles=data["roles"], language=data["language"], email=data["email"],
                                    phone=data["phone"])
    audit.record(session, "member_added", actor=principal.user_id, organization_id=principal.organization_id,
                 member_id=member_id, detail="roles=" + ",".join(sorted(set(data["roles"]))))
    session.commit()
    return _view(session, member_id)


def change_person(session: Session, principal: Principal, member_id: str, body, expected: int) -> dict:
    _admin(principal)
    data = _load(_CHANGE, body)
    _check_revision(_own(session, principal, member_id), expected)
    if not data:
        raise InvalidInput("say what changes", {"_schema": ["give at least one of name, email, phone, language"]})
    handlers.change_member(session, member_id, name=data.get("name"), email=data.get("email"),
                           phone=data.get("phone"), language=data.get("language"))
    audit.record(session, "member_changed", actor=principal.user_id, member_id=member_id,
                 detail="fields=" + ",".join(sorted(data)))
    return _commit_if_unchanged_meanwhile(session, member_id, expected)


def set_roles(session: Session, principal: Principal, member_id: str, body, expected: int) -> dict:
    _admin(principal)
    data = _load(_ROLES, body)
    _check_revision(_own(session, principal, member_id), expected)
    if member_id == principal.user_id and "admin" not in data["roles"]:
        raise InvalidInput("an admin cannot take her own admin role away",
                           {"roles": ["keep admin: another admin can change your roles"]})
    handlers.set_roles(session, member_id, data["roles"])
    audit.record(session, "member_roles_changed", actor=principal.user_id, member_id=member_id,
                 detail="roles=" + ",".join(sorted(set(data["roles"]))))
    return _commit_if_unchanged_meanwhile(session, member_id, expected)


def deactivate(session: Session, principal: Principal, member_id: str, expected: int) -> dict:
    _admin(principal)
    _check_revision(_own(session, principal, member_id), expected)
    if member_id == principal.user_id:
        raise InvalidInput("an admin cannot deactivate herself", {"person_id": ["ask another admin"]})
    revoked = handlers.deactivate_member(session, member_id)
    audit.record(session, "member_deactivated", actor=principal.user_id, member_id=member_id,
                 detail=f"tokens_revoked={revoked}")
    return _commit_if_unchanged_meanwhile(session, member_id, expected)


def _commit_if_unchanged_meanwhile(session: Session, member_id: str, expected: int,
                                   read: Callable[[Session, str], dict] | None = None) -> dict:
    """Each change bumps the revision by one; anything else means another
    edit got in between the check and the change: nothing is kept. Answers
    what ``read`` (the person's view by default) makes of her."""
    view = (read or _view)(session, member_id)
    if view["revision"] != expected + 1:
        session.rollback()
        current = _view(session, member_id)
        raise Stale("the person was changed meanwhile; read her again",
                    {"If-Match": [f"the person is at revision {current['revision']}"]},
                    current_version=current["revision"])
    session.commit()
    return view


# -- one's own tokens -------------------------------------------------------------------

TOKEN_FIELDS = ("id", "scope", "label", "created_at", "expires_at", "last_used_at", "revoked_at")


def _tokens(session: Session, principal: Principal, token_id: str | None = None) -> list[dict]:
    """The principal's own tokens (one, with ``token_id``), never a secret."""
    rows = handlers.list_tokens(session, member_id=principal.user_id, token_id=token_id)
    return [{k: row[k] for k in TOKEN_FIELDS} for row in rows]


def my_tokens(session: Session, principal: Principal) -> dict:
    return {"items": _tokens(session, principal)}


def issue_my_token(session: Session, principal: Principal, body) -> dict:
    data = _load(_TOKEN, body)
    if data["scope"] == "read_write" and principal.scope != "read_write":
        raise Forbidden("a read-only token cannot make one that writes")
    token_id, token, expires_at = handlers.issue_token(session, principal.user_id, scope=data["scope"],
                                                       days=data["days"], label=data["label"])
    audit.record(session, "token_issued", actor=principal.user_id, member_id=principal.user_id, token_id=token_id,
                 detail=f"scope={data['scope']}")
    session.commit()
    (issued,) = _tokens(session, principal, token_id)
    return {**issued, "token": token}


def revoke_my_token(session: Session, principal: Principal, token_id: str) -> dict:
    owner = session.execute(select(orm.api_tokens.c.person_id).where(orm.api_tokens.c.id == token_id)).scalar()
    if owner != principal.user_id:
        raise NotFound("no such token")
    handlers.revoke_token(session, token_id)
    audit.record(session, "token_revoked", actor=principal.user_id, member_id=principal.user_id, token_id=token_id)
    session.commit()
    (revoked,) = _tokens(session, principal, token_id)
    return revoked


# -- one's own notification settings ----------------------------------------------------

def my_notification_settings(session: Session, principal: Principal) -> dict:
    return handlers.notification_settings(session, principal.user_id)


def set_my_notification_settings(session: Session, principal: Principal, body, expected: int) -> dict:
    """All her settings at once, on the revision she read. The same settings
    again change nothing: the revision stays, nothing is audited."""
    if principal.scope != "read_write":
        raise Forbidden("this token may only read")
    data = _load(_SETTINGS, body)
    current = handlers.notification_settings(session, principal.user_id)
    _check_revision(current, expected)
    changed = handlers.set_notification_settings(session, principal.user_id, **data)
    if not changed:
        return current
    audit.record(session, "notification_settings_changed", actor=principal.user_id, member_id=principal.user_id,
                 detail="changed=" + ",".join(changed))
    return _commit_if_unchanged_meanwhile(session, principal.user_id, expected, handlers.notification_settings)
