"""Who is who: organisations, people, their roles, and what a token lets
its holder do. Pure rules; no database, no broker."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from contracts.identity_events import CLOCK, NOTIFICATION_KINDS, PERSONAL_CHANNELS
from contracts.rpc import ROLES

ORG_CODE = re.compile(r"[A-Z]{2,6}\Z")
COUNTRY = re.compile(r"[A-Z]{2}\Z")
E164 = re.compile(r"\+[1-9][0-9]{6,14}\Z")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\Z")
LANGUAGES = ("es", "en")
SCOPES = ("read", "read_write")
# admin manages people and never sees cases; it is never combined with a role that does
CASE_ROLES = frozenset({"focal_point", "case_lead", "president", "supervisor"})


class Invalid(ValueError):
    """Input that breaks a rule: ``fields`` says which, in the API's words."""

    def __init__(self, fields: dict[str, list[str]]):
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in fields.items()))
        self.fields = fields


def _check(errors: dict, name: str, ok: bool, message: str) -> None:
    if not ok:
        errors.setdefault(name, []).append(message)


def valid_timezone(name) -> bool:
    if not isinstance(name, str) or not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        return False
    try:
        ZoneInfo(name)
    except Exception:
        return False
    return True


def check_organization(*, code=None, name=None, country=None, timezone_name=None, language=None) -> None:
    """Checks the fields given (None: not given)."""
    errors: dict = {}
    if code is not None:
        _check(errors, "code", isinstance(code, str) and bool(ORG_CODE.match(code)), "two to six capital letters, e.g. CEC")
    if name is not None:
        _check(errors, "name", isinstance(name, str) and 0 < len(name.strip()) <= 200, "required, at most 200 characters")
    if country is not None:
        _check(errors, "country", isinstance(country, str) and bool(COUNTRY.match(country)),
               "two capital letters (ISO 3166-1), e.g. PE or CO")
    if timezone_name is not None:
        _check(errors, "timezone", valid_timezone(timezone_name), "unknown time zone")
    if language is not None:
        _check(errors, "language", language in LANGUAGES, f"one of {', '.join(LANGUAGES)}")
    if errors:
        raise Invalid(errors)


def normalise_email(address):
    return address.strip().lower() if isinstance(address, str) else address


def check_person(*, name=None, email=None, phone=None, language=None, roles=None) -> None:
    errors: dict = {}
    if name is not None:
        _check(errors, "name", isinstance(name, str) and 0 < len(name.strip()) <= 200, "required, at most 200 characters")
    if email is not None:
        _check(errors, "email", isinstance(email, str) and len(email) <= 320 and bool(EMAIL.match(email)),
               "not an e-mail address")
    if phone is not None:
        _check(errors, "phone", isinstance(phone, str) and bool(E164.match(phone)),
               "an international number in E.164 form, e.g. +51987654321")
    if language is not None:
        _check(errors, "language", language in LANGUAGES, f"one of {', '.join(LANGUAGES)}")
    if roles is not None:
        check_roles(roles, errors)
    if errors:
        raise Invalid(errors)


def check_roles(roles, errors: dict | None = None) -> None:
    own = errors if errors is not None else {}
    if not isinstance(roles, (list, tuple, set, frozenset)) or not roles:
        own["roles"] = ["at least one role"]
    elif any(r not in ROLES for r in roles):
        own["roles"] = [f"each one of {', '.join(ROLES)}"]
    elif "admin" in roles and CASE_ROLES & set(roles):
        own["roles"] = ["an admin manages people and sees no case: give these roles to another account"]
    if errors is None and own:
        raise Invalid(own)


def roles_text(roles) -> str:
    return ",".join(sorted(set(roles)))


def roles_of(text: str) -> tuple[str, ...]:
    return tuple(r for r in (text or "").split(",") if r)


@dataclass(frozen=True)
class NotificationSettings:
    """A person's notification settings, each one valid (``settings`` makes
    them): WhatsApp only with her opt-in, a quiet window of two different
    times of day (it may run over midnight), a digest's weekday (0 = Monday)
    and hour, and per notification kind the channels it reaches her on."""

    whatsapp_opt_in: bool = False
    quiet_hours: tuple[str, str] | None = None  # (start, end), "HH:MM" in the organisation's time zone
    digest: tuple[int, int] | None = None  # (weekday, hour); None: the rules' default
    preferences: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (kind, channels), by kind

    def as_data(self) -> dict:
        """The settings as events and the API carry them."""
        return {
            "whatsapp_opt_in": self.whatsapp_opt_in,
            "quiet_hours": None if self.quiet_hours is None else dict(zip(("start", "end"), self.quiet_hours)),
            "digest": None if self.digest is None else dict(zip(("weekday", "hour"), self.digest)),
            "preferences": {kind: list(channels) for kind, channels in self.preferences},
        }

    def changed_from(self, before: NotificationSettings) -> list[str]:
        """The names of the settings that differ from ``before``."""
        return [name for name in ("whatsapp_opt_in", "quiet_hours", "digest", "preferences")
                if getattr(self, name) != getattr(before, name)]


def _clock(value) -> bool:
    return isinstance(value, str) and re.match(CLOCK, value) is not None


def _count(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def settings(*, whatsapp_opt_in, quiet_hours, digest, preferences) -> NotificationSettings:
    """The settings from their API shape (see ``NotificationSettings.as_data``),
    or ``Invalid`` naming every setting that breaks a rule."""
    errors: dict = {}
    _check(errors, "whatsapp_opt_in", isinstance(whatsapp_opt_in, bool), "true or false")
    window = None
    if quiet_hours is not None:
        ok = isinstance(quiet_hours, dict) and set(quiet_hours) == {"start", "end"} \
            and _clock(quiet_hours["start"]) and _clock(quiet_hours["end"])
        _check(errors, "quiet_hours", ok, 'null or {"start": "HH:MM", "end": "HH:MM"}')
        if ok:
            window = (quiet_hours["start"], quiet_hours["end"])
            _check(errors, "quiet_hours", window[0] != window[1], "start and end differ (22:00 to 06:00 runs "
                   "over midnight)")
    weekly = None
    if digest is not None:
        ok = isinstance(digest, dict) and set(digest) == {"weekday", "hour"} \
            and _count(digest["weekday"], 0, 6) and _count(digest["hour"], 0, 23)
        _check(errors, "digest", ok, 'null or {"weekday": 0 to 6 (0 = Monday), "hour": 0 to 23}')
        weekly = (digest["weekday"], digest["hour"]) if ok else None
    chosen: list = []
    if not isinstance(preferences, dict):
        _check(errors, "preferences", False, "an object of notification kinds and their channels")
    else:
        for kind, channels in preferences.items():
            if kind not in NOTIFICATION_KINDS:
                _check(errors, "preferences", False,
                       f"{kind!s:.40}: not a kind; one of {', '.join(NOTIFICATION_KINDS)}")
            elif not isinstance(channels, (list, tuple)) or any(c not in PERSONAL_CHANNELS for c in channels):
                _check(errors, "preferences", False, f"{kind}: a list of {', '.join(PERSONAL_CHANNELS)}")
            elif len(set(channels)) != len(channels):
                _check(errors, "preferences", False, f"{kind}: each channel at most once")
            elif "whatsapp" in channels and whatsapp_opt_in is not True:
                _check(errors, "preferences", False, f"{kind}: whatsapp needs whatsapp_opt_in")
            else:
                chosen.append((kind, tuple(channels)))
    if errors:
        raise Invalid(errors)
    return NotificationSettings(whatsapp_opt_in, window, weekly, tuple(sorted(chosen)))


@dataclass(frozen=True)
class Principal:
    """Who a valid token belongs to, and what the token allows."""

    user_id: str
    organization_id: str
    roles: tuple[str, ...]
    supervised: tuple[str, ...] = ()
    scope: str = "read_write"
    token_id: str | None = None

    def as_caller(self) -> dict:
        return {
            "user_id": self.user_id, "organization_id": self.organization_id, "roles": list(self.roles),
            "supervised_organization_ids": list(self.supervised),
        }


@dataclass(frozen=True)
class TokenPolicy:
    lifetime: timedelta = timedelta(days=90)
    longest: timedelta = timedelta(days=366)
    last_use_every: timedelta = timedelta(minutes=1)  # last use is written at most this often

    def expiry(self, now: datetime, days: float | None) -> datetime:
        if days is None:
            return now + self.lifetime
        if not isinstance(days, (int, float)) or isinstance(days, bool) or days <= 0:
            raise Invalid({"days": ["a positive number of days"]})
        wanted = timedelta(days=days)
        if wanted > self.longest:
            raise Invalid({"days": [f"at most {self.longest.days} days"]})
        return now + wanted


@dataclass(frozen=True)
class ThrottlePolicy:
    """After ``limit`` failed logins within ``window``, the account or the
    address is locked for ``lock``; a success clears the account's count."""

    account_limit: int = 5
    address_limit: int = 20
    window: timedelta = timedelta(minutes=15)
    lock: timedelta = timedelta(minutes=15)


@dataclass
class Failures:
    failures: int
    window_started_at: datetime
    locked_until: datetime | None = field(default=None)

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and self.locked_until > now

    def fail(self, now: datetime, limit: int, policy: ThrottlePolicy) -> None:
        if now - self.window_started_at > policy.window:
            self.failures, self.window_started_at = 0, now
        self.failures += 1
        if self.failures >= limit:
            self.locked_until = now + policy.lock
