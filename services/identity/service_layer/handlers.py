"""Identity's commands and queries. Each command changes identity's own
tables and stages the event that tells the other services, in the caller's
transaction: the caller commits (or rolls back) both at once."""
from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from datetime import datetime, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from contracts.errors import Conflict, InvalidInput, NotFound
from contracts.events import build_event
from servicekit import outbox
from services.identity.adapters import orm
from services.identity.domain import model
from services.identity.domain.model import Invalid, NotificationSettings, Principal, ThrottlePolicy, TokenPolicy

TOKEN_PREFIX = "wmi_"
_hasher = PasswordHasher()  # argon2id, the library's recommended parameters


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _invalid(err: Invalid, message: str = "some fields are not valid") -> InvalidInput:
    return InvalidInput(message, err.fields)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# -- organisations -------------------------------------------------------------

def organization_id_of(session: Session | Connection, code: str) -> str | None:
    return session.execute(select(orm.organizations.c.id).where(orm.organizations.c.code == code)).scalar()


def organization_exists(session: Session | Connection, organization_id: str) -> bool:
    return session.execute(
        select(orm.organizations.c.id).where(orm.organizations.c.id == organization_id)
    ).first() is not None


def _organization_ids(session: Session, codes, field: str) -> list[str]:
    ids = []
    for code in codes or ():
        found = organization_id_of(session, code)
        if found is None:
            raise InvalidInput("unknown organisation", {field: [f"no organisation with code {code}"]})
        ids.append(found)
    return ids


def register_organization(session: Session, *, code: str, name: str, country: str, timezone_name: str,
                          language: str, overseen_by: list[str] = (), now: datetime | None = None) -> str:
    """``overseen_by``: codes of organisations that supervise this one."""
    try:
        model.check_organization(code=code, name=name, country=country, timezone_name=timezone_name,
                                 language=language)
    except Invalid as err:
        raise _invalid(err, "the organisation is not valid") from None
    if organization_id_of(session, code) is not None:
        raise Conflict("an organisation with this code exists", {"code": ["already used"]})
    overseers = _organization_ids(session, overseen_by, "overseen_by")
    now = now or utcnow()
    organization_id = str(uuid.uuid4())
    session.execute(insert(orm.organizations).values(
        id=organization_id, code=code, name=name.strip(), country=country, timezone=timezone_name,
        language=language, revision=1, created_at=now, updated_at=now,
    ))
    for overseer in overseers:
        session.execute(insert(orm.oversight).values(organization_id=organization_id, by_organization_id=overseer))
    _stage_organization(session, "organization_registered", organization_id, now)
    return organization_id


def change_organization(session: Session, organization_id: str, *, name=None, country=None, timezone_name=None,
                        language=None, overseen_by=None, now: datetime | None = None) -> None:
    try:
        model.check_organization(name=name, country=country, timezone_name=timezone_name, language=language)
    except Invalid as err:
        raise _invalid(err, "the organisation is not valid") from None
    if not organization_exists(session, organization_id):
        raise NotFound("no such organisation")
    values = {k: v for k, v in (("name", name), ("country", country), ("timezone", timezone_name),
                                ("language", language)) if v is not None}
    now = now or utcnow()
    t = orm.organizations
    session.execute(update(t).where(t.c.id == organization_id).values(
        **values, revision=t.c.revision + 1, updated_at=now))
    if overseen_by is not None:
        overseers = _organization_ids(session, overseen_by, "overseen_by")
        session.execute(delete(orm.oversight).where(orm.oversight.c.organization_id == organization_id))
        for overseer in overseers:
            session.execute(insert(orm.oversight).values(organization_id=organization_id, by_organization_id=overseer))
    _stage_organization(session, "organization_changed", organization_id, now)


def organization_state(session: Session, organization_id: str) -> dict:
    t = orm.organizations
    row = session.execute(select(t).where(t.c.id == organization_id)).one()
    overseers = session.execute(
        select(orm.oversight.c.by_organization_id).where(orm.oversight.c.organization_id == organization_id)
        .order_by(orm.oversight.c.by_organization_id)
    ).scalars().all()
    return {"code": row.code, "name": row.name, "country": row.country, "timezone": row.timezone,
            "language": row.language, "overseen_by": list(overseers), "revision": row.revision}


def _stage_organization(session: Session, type_: str, organization_id: str, now: datetime) -> None:
    outbox.stage(session, orm.outbox, build_event(
        type_, organization_id=organization_id, occurred_at=now, data=organization_state(session, organization_id),
    ), source="identity")


# -- members -------------------------------------------------------------------

def add_member(session: Session, *, organization_id: str, name: str, roles: list[str], language: str,
               email: str | None = None, phone: str | None = None, supervises: list[str] = (),
               whatsapp_opt_in: bool = False, now: datetime | None = None) -> str:
    """A person of an organisation. ``supervises``: codes of organisations
    she supervises (she needs the supervisor role); ``whatsapp_opt_in``: she
    agreed to be written to on WhatsApp."""
    email = model.normalise_email(email)
    try:
        model.check_person(name=name, email=email, phone=phone, language=language, roles=roles)
        initial = model.settings(whatsapp_opt_in=whatsapp_opt_in, quiet_hours=None, digest=None, preferences={})
    except Invalid as err:
        raise _invalid(err, "the person is not valid") from None
    if not organization_exists(session, organization_id):
        raise InvalidInput("unknown organisation", {"organization_id": ["unknown organisation"]})
    supervised = _organization_ids(session, supervises, "supervises")
    if supervised and "supervisor" not in roles:
        raise InvalidInput("only a supervisor supervises", {"supervises": ["add the supervisor role"]})
    if email is not None and _email_taken(session, email):
        raise Conflict("this e-mail address belongs to another person", {"email": ["already used"]})
    now = now or utcnow()
    member_id = str(uuid.uuid4())
    session.execute(insert(orm.people).values(
        id=member_id, organization_id=organization_id, name=name.strip(), email=email, phone=phone,
        language=language, roles=model.roles_text(roles), active=True, revision=1, created_at=now, updated_at=now,
        whatsapp_opt_in=initial.whatsapp_opt_in, whatsapp_opted_in_at=now if initial.whatsapp_opt_in else None,
    ))
    for supervised_id in supervised:
        session.execute(insert(orm.supervisions).values(person_id=member_id, organization_id=supervised_id))
    _stage_member(session, "member_added", member_id, now)
    return member_id


def _email_taken(session: Session, email: str, other_than: str | None = None) -> bool:
    query = select(orm.people.c.id).where(orm.people.c.email == email)
    if other_than is not None:
        query = query.where(orm.people.c.id != other_than)
    return session.execute(query).first() is not None


def _person(session: Session | Connection, member_id: str):
    row = session.execute(select(orm.people).where(orm.people.c.id == member_id)).first()
    if row is None:
        raise NotFound("no such person")
    return row


def change_member(session: Session, member_id: str, *, name=None, email=None, phone=None, language=None,
                  now: datetime | None = None) -> None:
    email = model.normalise_email(email)
    try:
        model.check_person(name=name, email=email, phone=phone, language=language)
    except Invalid as err:
        raise _invalid(err, "the person is not valid") from None
    _person(session, member_id)
    if email is not None and _email_taken(session, email, other_than=member_id):
        raise Conflict("this e-mail address belongs to another person", {"email": ["already used"]})
    values = {k: v for k, v in (("name", name), ("email", email), ("phone", phone), ("language", language))
              if v is not None}
    _bump(session, member_id, now := now or utcnow(), **values)
    _stage_member(session, "member_changed", member_id, now)


def set_roles(session: Session, member_id: str, roles: list[str], now: datetime | None = None) -> None:
    try:
        model.check_roles(roles)
    except Invalid as err:
        raise _invalid(err, "the roles are not valid") from None
    _person(session, member_id)
    if "supervisor" not in roles:  # a supervisor no more supervises nothing
        session.execute(delete(orm.supervisions).where(orm.supervisions.c.person_id == member_id))
    _bump(session, member_id, now := now or utcnow(), roles=model.roles_text(roles))
    _stage_member(session, "member_roles_changed", member_id, now)


def grant_supervision(session: Session, member_id: str, organization_code: str, now: datetime | None = None) -> None:
    person = _person(session, member_id)
    if "supervisor" not in model.roles_of(person.roles):
        raise InvalidInput("only a supervisor supervises", {"roles": ["add the supervisor role first"]})
    (organization_id,) = _organization_ids(session, [organization_code], "organization")
    exists = session.execute(select(orm.supervisions.c.person_id).where(
        orm.supervisions.c.person_id == member_id, orm.supervisions.c.organization_id == organization_id)).first()
    if exists:
        return
    session.execute(insert(orm.supervisions).values(person_id=member_id, organization_id=organization_id))
    _bump(session, member_id, now := now or utcnow())
    _stage_member(session, "supervision_granted", member_id, now)


def end_supervision(session: Session, member_id: str, organization_code: str, now: datetime | None = None) -> None:
    _person(session, member_id)
    (organization_id,) = _organization_ids(session, [organization_code], "organization")
    gone = session.execute(delete(orm.supervisions).where(
        orm.supervisions.c.person_id == member_id, orm.supervisions.c.organization_id == organization_id)).rowcount
    if not gone:
        return
    _bump(session, member_id, now := now or utcnow())
    _stage_member(session, "supervision_ended", member_id, now)


def set_notification_settings(session: Session, member_id: str, *, whatsapp_opt_in, quiet_hours, digest,
                              preferences, now: datetime | None = None) -> list[str]:
    """Replaces her notification settings (shapes as in ``notification_settings``)
    and returns the names of those that changed. Nothing changed: nothing is
    written and no event goes out. The opt-in's time is when she last gave it;
    withdrawn, it is cleared."""
    try:
        wanted = model.settings(whatsapp_opt_in=whatsapp_opt_in, quiet_hours=quiet_hours, digest=digest,
                                preferences=preferences)
    except Invalid as err:
        raise _invalid(err, "the notification settings are not valid") from None
    person = _person(session, member_id)
    changed = wanted.changed_from(_settings(person))
    if not changed:
        return []
    now = now or utcnow()
    if not wanted.whatsapp_opt_in:
        opted_in_at = None
    elif person.whatsapp_opt_in:
        opted_in_at = person.whatsapp_opted_in_at  # given before: it stands from then
    else:
        opted_in_at = now
    start, end = wanted.quiet_hours or (None, None)
    weekday, hour = wanted.digest or (None, None)
    _bump(session, member_id, now, whatsapp_opt_in=wanted.whatsapp_opt_in, whatsapp_opted_in_at=opted_in_at,
          quiet_hours_start=start, quiet_hours_end=end, digest_weekday=weekday, digest_hour=hour,
          preferences=json.dumps(wanted.as_data()["preferences"], sort_keys=True))
    _stage_member(session, "member_changed", member_id, now)
    return changed


def notification_settings(session: Session | Connection, member_id: str) -> dict:
    """Her settings as the API shows them to her: those of her events, when
    she gave her WhatsApp opt-in, her organisation's time zone (of the quiet
    hours and the digest) and her revision."""
    person = _person(session, member_id)
    zone = session.execute(select(orm.organizations.c.timezone)
                           .where(orm.organizations.c.id == person.organization_id)).scalar()
    return {**_settings(person).as_data(), "whatsapp_opted_in_at": person.whatsapp_opted_in_at, "timezone": zone,
            "revision": person.revision}


def _settings(person) -> NotificationSettings:
    """The settings of a row of ``people``, as stored (valid when written)."""
    return NotificationSettings(
        whatsapp_opt_in=bool(person.whatsapp_opt_in),
        quiet_hours=None if person.quiet_hours_start is None else (person.quiet_hours_start, person.quiet_hours_end),
        digest=None if person.digest_weekday is None else (person.digest_weekday, person.digest_hour),
        preferences=tuple(sorted((kind, tuple(channels))
                                 for kind, channels in json.loads(person.preferences).items())),
    )


def deactivate_member(session: Session, member_id: str, now: datetime | None = None) -> int:
    """She can no longer sign in, and every token she holds stops working at
    its next request. Returns how many tokens were revoked."""
    person = _person(session, member_id)
    now = now or utcnow()
    revoked = session.execute(update(orm.api_tokens).where(
        orm.api_tokens.c.person_id == member_id, orm.api_tokens.c.revoked_at.is_(None)).values(revoked_at=now)
    ).rowcount
    if person.active:
        _bump(session, member_id, now, active=False, deactivated_at=now)
        _stage_member(session, "member_deactivated", member_id, now)
    return revoked


def _bump(session: Session, member_id: str, now: datetime, **values) -> None:
    t = orm.people
    session.execute(update(t).where(t.c.id == member_id).values(**values, revision=t.c.revision + 1, updated_at=now))


def member_state(session: Session, member_id: str) -> tuple[str, dict]:
    person = _person(session, member_id)
    supervised = session.execute(
        select(orm.supervisions.c.organization_id).where(orm.supervisions.c.person_id == member_id)
        .order_by(orm.supervisions.c.organization_id)
    ).scalars().all()
    return person.organization_id, {
        "member_id": person.id, "name": person.name, "email": person.email, "phone": person.phone,
        "language": person.language, "roles": list(model.roles_of(person.roles)), "active": bool(person.active),
        "supervised_organization_ids": list(supervised), "revision": person.revision,
        **_settings(person).as_data(),
    }


def _stage_member(session: Session, type_: str, member_id: str, now: datetime) -> None:
    organization_id, data = member_state(session, member_id)
    outbox.stage(session, orm.outbox, build_event(type_, organization_id=organization_id, occurred_at=now, data=data),
                 source="identity")


def member_of(session: Session | Connection, organization_id: str, member_id: str, role: str | None = None) -> bool:
    """An active person of this organisation (with this role, if given)."""
    row = session.execute(select(orm.people.c.roles).where(
        orm.people.c.id == member_id, orm.people.c.organization_id == organization_id,
        orm.people.c.active.is_(True))).first()
    return row is not None and (role is None or role in model.roles_of(row.roles))


# -- passwords and logins --------------------------------------------------------

def set_password(session: Session, member_id: str, password: str) -> None:
    if not isinstance(password, str) or not 12 <= len(password) <= 200:
        raise InvalidInput("the password is not valid", {"password": ["between 12 and 200 characters"]})
    _person(session, member_id)
    session.execute(update(orm.people).where(orm.people.c.id == member_id).values(password_hash=_hasher.hash(password)))


class LoginRefused(Exception):
    """Wrong address or password, an inactive person, or too many tries:
    the same answer for each, so that it tells nothing about the account."""

    def __init__(self, retry_after: int | None = None):
        super().__init__("login refused")
        self.retry_after = retry_after


def login(session: Session, *, email: str, password: str, address: str, now: datetime | None = None,
          throttle: ThrottlePolicy = ThrottlePolicy(), tokens: TokenPolicy = TokenPolicy(),
          session_days: float = 0.5) -> tuple[str, Principal]:
    """A read-write token for a console session, after the password checks
    out. Throttled per account and per address; the caller commits, also
    when ``LoginRefused`` is raised (the failure is counted)."""
    now = now or utcnow()
    email = model.normalise_email(email) if isinstance(email, str) else ""
    keys = (f"account:{email[:320]}", f"address:{str(address)[:64]}")
    counters = {key: _failures(session, key) for key in keys}
    locked = [c.locked_until for c in counters.values() if c is not None and c.locked(now)]
    if locked:
        raise LoginRefused(retry_after=int((max(locked) - now).total_seconds()) + 1)
    person = session.execute(select(orm.people).where(orm.people.c.email == email)).first() if email else None
    ok = False
    if person is not None and person.password_hash and person.active:
        try:
            ok = _hasher.verify(person.password_hash, password if isinstance(password, str) else "")
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
    else:
        _hasher.hash("not a real password")  # the same time spent either way
    if not ok:
        for key, limit in zip(keys, (throttle.account_limit, throttle.address_limit)):
            _fail(session, key, counters[key], now, limit, throttle)
        raise LoginRefused()
    session.execute(delete(orm.login_failures).where(orm.login_failures.c.key == keys[0]))
    if _hasher.check_needs_rehash(person.password_hash):
        session.execute(update(orm.people).where(orm.people.c.id == person.id)
                        .values(password_hash=_hasher.hash(password)))
    token_id, token, _ = issue_token(session, person.id, scope="read_write", days=session_days, label="console",
                                     policy=tokens, now=now)
    principal = authenticate(session, f"Bearer {token}", now=now)
    return token, principal


def _failures(session: Session, key: str) -> model.Failures | None:
    row = session.execute(select(orm.login_failures).where(orm.login_failures.c.key == key)).first()
    return None if row is None else model.Failures(row.failures, row.window_started_at, row.locked_until)


def _fail(session: Session, key: str, current, now: datetime, limit: int, policy: ThrottlePolicy) -> None:
    counter = current or model.Failures(0, now)
    counter.fail(now, limit, policy)
    values = {"failures": counter.failures, "window_started_at": counter.window_started_at,
              "locked_until": counter.locked_until}
    if current is None:
        try:
            with session.begin_nested():
                session.execute(insert(orm.login_failures).values(key=key, **values))
            return
        except IntegrityError:  # a failure at the same moment made the row
            pass
    session.execute(update(orm.login_failures).where(orm.login_failures.c.key == key).values(**values))


# -- tokens --------------------------------------------------------------------

def issue_token(session: Session, member_id: str, *, scope: str = "read_write", days: float | None = None,
                label: str = "api", policy: TokenPolicy = TokenPolicy(), now: datetime | None = None
                ) -> tuple[str, str, datetime]:
    """A new token for an active person: (id, secret, expiry). The secret is
    shown once; only its SHA-256 is kept."""
    if scope not in model.SCOPES:
        raise InvalidInput("unknown scope", {"scope": [f"one of {', '.join(model.SCOPES)}"]})
    if not isinstance(label, str) or not 0 < len(label) <= 100:
        raise InvalidInput("the label is not valid", {"label": ["between 1 and 100 characters"]})
    person = _person(session, member_id)
    if not person.active:
        raise Conflict("this person is deactivated", {"member": ["deactivated"]})
    now = now or utcnow()
    try:
        expires_at = policy.expiry(now, days)
    except Invalid as err:
        raise _invalid(err) from None
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = str(uuid.uuid4())
    session.execute(insert(orm.api_tokens).values(
        id=token_id, token_hash=hash_token(token), person_id=member_id, scope=scope, label=label, created_at=now,
        expires_at=expires_at,
    ))
    return token_id, token, expires_at


def list_tokens(session: Session, *, member_id: str | None = None, organization_id: str | None = None,
                token_id: str | None = None) -> list[dict]:
    """Tokens as an operator sees them: never the secret, nor its hash."""
    t, p = orm.api_tokens, orm.people
    query = (select(t.c.id, t.c.person_id, p.c.organization_id, t.c.scope, t.c.label, t.c.created_at, t.c.expires_at,
                    t.c.last_used_at, t.c.revoked_at).join(p, p.c.id == t.c.person_id)
             .order_by(t.c.created_at, t.c.id))
    if member_id is not None:
        query = query.where(t.c.person_id == member_id)
    if organization_id is not None:
        query = query.where(p.c.organization_id == organization_id)
    if token_id is not None:
        query = query.where(t.c.id == token_id)
    return [dict(row._mapping) for row in session.execute(query)]


def revoke_token(session: Session, token_id: str, now: datetime | None = None) -> bool:
    """True if it was live until now."""
    row = session.execute(select(orm.api_tokens.c.revoked_at).where(orm.api_tokens.c.id == token_id)).first()
    if row is None:
        raise NotFound("no such token")
    if row.revoked_at is not None:
        return False
    session.execute(update(orm.api_tokens).where(orm.api_tokens.c.id == token_id).values(revoked_at=now or utcnow()))
    return True


def authenticate(session: Session | Connection, authorization: str | None, *, now: datetime | None = None,
                 policy: TokenPolicy = TokenPolicy()) -> Principal | None:
    """The principal of a bearer token that is live: not expired, not
    revoked, held by an active person. One round trip, plus a write of the
    token's last use at most once a minute."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    token = authorization[len("Bearer "):].strip()
    if not token or len(token) > 200:
        return None
    t, p, s = orm.api_tokens, orm.people, orm.supervisions
    rows = session.execute(
        select(p.c.id, p.c.organization_id, p.c.roles, p.c.active, t.c.id.label("token_id"), t.c.scope,
               t.c.expires_at, t.c.last_used_at, t.c.revoked_at, s.c.organization_id.label("supervised"))
        .join(t, t.c.person_id == p.c.id)
        .outerjoin(s, s.c.person_id == p.c.id)
        .where(t.c.token_hash == hash_token(token))
    ).all()
    if not rows:
        return None
    first = rows[0]
    now = now or utcnow()
    if first.revoked_at is not None or first.expires_at <= now or not first.active:
        return None
    if first.last_used_at is None or now - first.last_used_at >= policy.last_use_every:
        session.execute(update(t).where(t.c.id == first.token_id).values(last_used_at=now))
    supervised = sorted(row.supervised for row in rows if row.supervised is not None)
    return Principal(first.id, first.organization_id, model.roles_of(first.roles), tuple(supervised),
                     scope=first.scope, token_id=first.token_id)


def token_person(session: Session | Connection, token: str) -> str | None:
    """Whose token this is, whatever its state (for operators' tools)."""
    return session.execute(
        select(orm.api_tokens.c.person_id).where(orm.api_tokens.c.token_hash == hash_token(token))
    ).scalar()
