"""Who hears of what, how urgently and on which channels: the rules as data.

The rules live in ``rules.yaml`` (versioned and commented for operators),
with per-organisation overrides under ``organizations:`` or as one
``<CODE>.yaml`` per cooperative in an overrides directory. Everything is
checked on load, and an error names its file, its line and what is wrong;
``RulesHolder`` keeps the rules it has when a changed file does not pass.

A rule is frozen into each notice when its event arrives (``rule_to_json``),
as on-call systems freeze an escalation chain when an alert starts: a later
edit of the file changes what happens to later events, never to a notice
already under way.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from contracts.identity_events import NOTIFICATION_KINDS
from contracts.rpc import RISK_LEVELS

VERSION = 1
EVENTS = ("case_opened", "risk_changed", "case_classified", "step_due_soon", "step_overdue", "step_escalated",
          "case_closed", "case_reopened", "digest")
AUDIENCES = ("president", "supervisor", "responsible", "case_lead", "focal_point", "rung", "organization")
URGENCIES = ("normal", "urgent", "critical")
CHANNELS = ("email", "sms", "whatsapp", "webhook")
# the escalation ladder of the protocol, lowest rung first; a rule's ladder keeps this order
LADDER = ("focal_point", "case_lead", "president", "supervisor")
DEFAULT_LADDER = ("case_lead", "president", "supervisor")
# the facts of an event a rule may test, and the events that carry each
CONDITIONS = {"risk_level": (RISK_LEVELS, ("case_opened", "risk_changed"))}
# audiences that name someone of the event itself
EVENT_AUDIENCES = {"responsible": ("step_due_soon", "step_overdue", "step_escalated"), "rung": ("step_escalated",)}
PAID_CHANNELS = ("sms", "whatsapp")
RULE_KEYS = ("name", "event", "when", "to", "urgency", "channels", "ack_wait_minutes", "ladder", "kind")
MAX_ACK_WAIT_MINUTES = 7 * 24 * 60
MAX_ACK_LINK_DAYS = 90
MAX_CAP = 1_000_000
ORG_CODE = re.compile(r"[A-Z]{2,6}\Z")
RULE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RulesInvalid(Exception):
    """A rules file that cannot be used, with the line where it goes wrong."""

    def __init__(self, path: Path | str, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}")
        self.path = Path(path)
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class Rule:
    """One rule: on ``event`` (when its data has the facts in ``when``), tell
    the audiences ``to`` with template ``kind`` on every chain of
    ``channels`` side by side, each chain tried in its order. Urgent and
    critical rules wait ``ack_wait_minutes`` for an acknowledgement, then
    climb ``ladder``; normal rules have neither."""

    name: str
    event: str
    when: dict
    to: tuple[str, ...]
    urgency: str
    channels: tuple[tuple[str, ...], ...]
    ack_wait_minutes: int | None
    ladder: tuple[str, ...]
    kind: str

    def applies(self, event_type: str, data: dict) -> bool:
        return self.event == event_type and all(data.get(k) == v for k, v in self.when.items())


@dataclass(frozen=True)
class DigestDefaults:
    weekday: int  # 0 = Monday
    hour: int  # local hour in the organisation's zone


@dataclass(frozen=True)
class _Settings:
    """What one organisation follows: the defaults with its overrides applied."""

    rules: tuple[Rule, ...]
    digest: DigestDefaults
    caps: dict
    webhook_url: str | None


class Rules:
    """The rules every organisation follows, its own overrides applied."""

    def __init__(self, *, defaults: _Settings, organizations: dict[str, _Settings], ack_link_days: int):
        self.version = VERSION
        self.digest = defaults.digest
        self.ack_link_days = ack_link_days
        self._defaults = defaults
        self._organizations = organizations

    def _of(self, code: str | None) -> _Settings:
        return self._organizations.get(code, self._defaults) if code else self._defaults

    def matching(self, event_type: str, data: dict, organization_code: str | None) -> list[Rule]:
        """Every rule of the organisation the event meets, in file order. Two
        rules may name the same person and channel: the service sends each
        recipient each channel once."""
        return [r for r in self._of(organization_code).rules if r.applies(event_type, data)]

    def digest_rule(self, code: str | None) -> Rule | None:
        """The organisation's weekly digest rule, or None if it has none."""
        return next((r for r in self._of(code).rules if r.event == "digest"), None)

    def digest_schedule(self, code: str | None) -> tuple[int, int]:
        """(weekday, hour) of the organisation's digest, unless a person chose her own."""
        digest = self._of(code).digest
        return digest.weekday, digest.hour

    def caps(self, code: str | None) -> dict[str, int]:
        """Messages per calendar month (in the organisation's zone) on each paid channel."""
        return dict(self._of(code).caps)

    def webhook_url(self, code: str | None) -> str | None:
        return self._of(code).webhook_url


def rule_to_json(rule: Rule) -> dict:
    return {
        "name": rule.name, "event": rule.event, "when": dict(rule.when), "to": list(rule.to),
        "urgency": rule.urgency, "channels": [list(chain) for chain in rule.channels],
        "ack_wait_minutes": rule.ack_wait_minutes, "ladder": list(rule.ladder), "kind": rule.kind,
    }


def rule_from_json(data: dict) -> Rule:
    """The rule frozen into a notice by ``rule_to_json``."""
    return Rule(
        name=data["name"], event=data["event"], when=dict(data["when"]), to=tuple(data["to"]),
        urgency=data["urgency"], channels=tuple(tuple(chain) for chain in data["channels"]),
        ack_wait_minutes=data["ack_wait_minutes"], ladder=tuple(data["ladder"]), kind=data["kind"],
    )


def load_rules(path: Path, *, overrides_dir: Path | None = None) -> Rules:
    """The rules of ``path`` and of every ``<CODE>.yaml`` in ``overrides_dir``
    (a directory that does not exist holds none); ``RulesInvalid`` for the
    first thing wrong in any of them."""
    path = Path(path)
    top = _File(path)
    root = top.mapping(top.root, "the rules file", required=("version", "rules"),
                       allowed=("version", "digest", "caps", "ack_link_days", "rules", "organizations"))
    version = root["version"][1]
    if top.integer(version, "version", 0, 2**31) != VERSION:
        top.fail(version, f"version must be {VERSION}")
    digest = _digest(top, root["digest"][1]) if "digest" in root else DigestDefaults(weekday=0, hour=8)
    caps = {c: 300 for c in PAID_CHANNELS}
    if "caps" in root:
        caps = _caps(top, root["caps"][1], caps)
    ack_link_days = 7
    if "ack_link_days" in root:
        ack_link_days = top.integer(root["ack_link_days"][1], "ack_link_days", 1, MAX_ACK_LINK_DAYS)
    rules: dict[str, tuple[Rule, Node]] = {}
    for node in top.sequence(root["rules"][1], "rules"):
        rule = _rule(top, node)
        if rule.name in rules:
            top.fail(node, f"a second rule named {rule.name}")
        rules[rule.name] = (rule, node)
    digests = [node for rule, node in rules.values() if rule.event == "digest"]
    if len(digests) > 1:
        top.fail(digests[1], "a second digest rule: an organisation has one digest")
    defaults = _Settings(tuple(r for r, _ in rules.values()), digest, caps, None)

    organizations: dict[str, _Settings] = {}
    found: dict[str, Path] = {}
    if "organizations" in root:
        for code, (key, node) in top.mapping(root["organizations"][1], "organizations").items():
            if not ORG_CODE.match(code):
                top.fail(key, f"{code!s:.20} is not an organisation code (two to six capital letters)")
            organizations[code] = _organization(top, node, rules, defaults)
            found[code] = path
    if overrides_dir is not None:
        for file in sorted(Path(overrides_dir).glob("*.yaml")):
            override = _File(file)
            if not ORG_CODE.match(file.stem):
                override.fail(override.root, "the file's name must be an organisation code, e.g. CEC.yaml")
            if file.stem in found:
                override.fail(override.root, f"{file.stem} is configured in {found[file.stem]} already")
            organizations[file.stem] = _organization(override, override.root, rules, defaults)
            found[file.stem] = file
    return Rules(defaults=defaults, organizations=organizations, ack_link_days=ack_link_days)


class RulesHolder:
    """The rules in force, reloaded when their files change. A change that
    does not validate is reported to ``on_error`` and the rules in force
    stay; the service never runs without rules, nor on half a file."""

    def __init__(self, path: Path, overrides_dir: Path | None = None, *,
                 on_error: Callable[[RulesInvalid], None]):
        self.path = Path(path)
        self.overrides_dir = Path(overrides_dir) if overrides_dir is not None else None
        self.on_error = on_error
        self._stamp = self._files_stamp()
        self.current = load_rules(self.path, overrides_dir=self.overrides_dir)

    def reload(self) -> bool:
        """True if the files' rules are in force now; False if they did not
        validate (and the previous ones still are)."""
        try:
            self.current = load_rules(self.path, overrides_dir=self.overrides_dir)
        except RulesInvalid as error:
            self.on_error(error)
            return False
        return True

    def reload_if_changed(self) -> bool:
        """Reload if any file changed, appeared or went since the last look
        (one stat per file); True if new rules are in force. A file that
        failed is reported once, not on every look until it changes."""
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return self.reload()

    def _files_stamp(self) -> tuple:
        files = [self.path]
        if self.overrides_dir is not None and self.overrides_dir.is_dir():
            files += sorted(self.overrides_dir.glob("*.yaml"))
        stamps = []
        for file in files:
            try:
                info = os.stat(file)
            except OSError:
                stamps.append((str(file), None))
            else:
                stamps.append((str(file), info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(stamps)


def _rule(f: _File, node: Node, *, overriding: bool = False) -> Rule:
    """The rule a node describes. ``enabled`` (true) is allowed in an
    organisation's rules only, where ``enabled: false`` switches one off."""
    keys = f.mapping(node, "a rule", required=("name",), allowed=RULE_KEYS + (("enabled",) if overriding else ()))
    name = f.string(keys["name"][1], "name")
    if not RULE_NAME.match(name):
        f.fail(keys["name"][1], "a rule's name is lower case letters, digits and _, e.g. step_overdue")
    for required in ("event", "to", "urgency", "channels", "kind"):
        if required not in keys:
            f.fail(node, f"rule {name}: {required} is missing")
    event = f.string(keys["event"][1], "event", EVENTS)
    when: dict = {}
    if "when" in keys:
        for condition, (key, value) in f.mapping(keys["when"][1], "when").items():
            if condition not in CONDITIONS:
                f.fail(key, f"when: {condition!s:.40} is not a condition; one of {', '.join(CONDITIONS)}")
            choices, events = CONDITIONS[condition]
            if event not in events:
                f.fail(key, f"when: {condition} is known only on {', '.join(events)}")
            when[condition] = f.string(value, f"when.{condition}", choices)
    to = f.distinct(keys["to"][1], "to", AUDIENCES)
    for audience in to:
        events = EVENT_AUDIENCES.get(audience, EVENTS)
        if event not in events:
            f.fail(keys["to"][1], f"to: {audience} is known only on {', '.join(events)}")
    urgency = f.string(keys["urgency"][1], "urgency", URGENCIES)
    chains = f.sequence(keys["channels"][1], "channels", non_empty=True)
    channels = tuple(f.distinct(chain, "a chain of channels", CHANNELS) for chain in chains)
    used = [c for chain in channels for c in chain]
    if len(used) != len(set(used)):
        f.fail(keys["channels"][1], "channels: each channel stands in one chain only")
    webhook = [chain for chain in channels if "webhook" in chain]
    if webhook and webhook[0] != ("webhook",):
        f.fail(keys["channels"][1], "channels: webhook stands in a chain of its own (only an organisation has one)")
    if bool(webhook) != ("organization" in to):
        f.fail(keys["channels"][1], "channels: the webhook chain and the organization audience go together")
    kind = f.string(keys["kind"][1], "kind", NOTIFICATION_KINDS)
    if (kind == "digest") != (event == "digest"):
        f.fail(keys["kind"][1], "kind: digest is the kind of the digest event, and its only kind")
    if event == "digest" and urgency != "normal":
        f.fail(keys["urgency"][1], "urgency: a digest is normal")
    ack_wait = None
    ladder: tuple[str, ...] = ()
    if urgency == "normal":
        for refused in ("ack_wait_minutes", "ladder"):
            if refused in keys:
                f.fail(keys[refused][0], f"{refused}: only urgent and critical rules wait for an acknowledgement")
    else:
        if "ack_wait_minutes" not in keys:
            f.fail(node, f"rule {name}: ack_wait_minutes is missing (an {urgency} rule waits for an acknowledgement)")
        ack_wait = f.integer(keys["ack_wait_minutes"][1], "ack_wait_minutes", 1, MAX_ACK_WAIT_MINUTES)
        ladder = DEFAULT_LADDER
        if "ladder" in keys:
            ladder = f.distinct(keys["ladder"][1], "ladder", LADDER, non_empty=True)
            if list(ladder) != [r for r in LADDER if r in ladder]:
                f.fail(keys["ladder"][1], f"ladder: climbs in the order {', '.join(LADDER)}")
    return Rule(name=name, event=event, when=when, to=to, urgency=urgency, channels=channels,
                ack_wait_minutes=ack_wait, ladder=ladder, kind=kind)


def _organization(f: _File, node: Node, defaults: dict[str, tuple[Rule, Node]], base: _Settings) -> _Settings:
    """One organisation's settings: the defaults with its entry applied. A
    rule named as a default replaces it in place, ``enabled: false`` removes
    it, and a new name adds a rule after the defaults."""
    keys = f.mapping(node, "an organisation's entry", allowed=("rules", "caps", "digest", "webhook_url"))
    rules = dict(defaults)
    if "rules" in keys:
        seen: set[str] = set()
        for rule_node in f.sequence(keys["rules"][1], "rules"):
            entry = f.mapping(rule_node, "a rule", required=("name",))
            name = f.string(entry["name"][1], "name")
            if name in seen:
                f.fail(rule_node, f"a second rule named {name}")
            seen.add(name)
            if "enabled" in entry and not f.boolean(entry["enabled"][1], "enabled"):
                extra = [k for k in entry if k not in ("name", "enabled")]
                if extra:
                    f.fail(entry[extra[0]][0], "a rule switched off (enabled: false) has only its name")
                if name not in defaults:
                    f.fail(rule_node, f"no default rule named {name} to switch off")
                del rules[name]
            else:
                rules[name] = (_rule(f, rule_node, overriding=True), rule_node)
    default_nodes = [n for _, n in defaults.values()]
    digests = [n for rule, n in rules.values() if rule.event == "digest"]
    if len(digests) > 1:
        ours = next(n for n in digests if all(n is not d for d in default_nodes))
        f.fail(ours, "a second digest rule: an organisation has one digest")
    return _Settings(
        rules=tuple(rule for rule, _ in rules.values()),
        digest=_digest(f, keys["digest"][1]) if "digest" in keys else base.digest,
        caps=_caps(f, keys["caps"][1], base.caps) if "caps" in keys else dict(base.caps),
        webhook_url=_webhook_url(f, keys["webhook_url"][1]) if "webhook_url" in keys else None,
    )


def _digest(f: _File, node: Node) -> DigestDefaults:
    keys = f.mapping(node, "digest", required=("weekday", "hour"), allowed=("weekday", "hour"))
    return DigestDefaults(weekday=f.integer(keys["weekday"][1], "digest.weekday (0 = Monday)", 0, 6),
                          hour=f.integer(keys["hour"][1], "digest.hour", 0, 23))


def _caps(f: _File, node: Node, base: dict) -> dict:
    keys = f.mapping(node, "caps", allowed=PAID_CHANNELS)
    return {c: f.integer(keys[c][1], f"caps.{c}", 0, MAX_CAP) if c in keys else base[c] for c in PAID_CHANNELS}


def _webhook_url(f: _File, node: Node) -> str:
    """An https address; plain http only to this machine (a test receiver)."""
    url = f.string(node, "webhook_url")
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname
    except ValueError:
        scheme, host = "", None
    if not host or not (scheme == "https" or (scheme == "http" and host in LOOPBACK)):
        f.fail(node, "webhook_url must be an https:// address")
    return url


class _File:
    """One YAML file read as nodes, so that every value keeps its line."""

    def __init__(self, path: Path):
        self.path = path
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise RulesInvalid(path, 1, f"cannot be read ({type(error).__name__})") from None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            raise RulesInvalid(path, mark.line + 1 if mark else 1, f"not YAML: {error.problem}") from None
        except yaml.YAMLError as error:
            raise RulesInvalid(path, 1, f"not YAML: {error}") from None
        if root is None:
            raise RulesInvalid(path, 1, "the file is empty")
        self.root: Node = root
        self._scalars = SafeConstructor()

    def fail(self, node: Node, reason: str) -> NoReturn:
        raise RulesInvalid(self.path, node.start_mark.line + 1, reason)

    def mapping(self, node: Node, what: str, *, required: tuple[str, ...] = (),
                allowed: tuple[str, ...] | None = None) -> dict[str, tuple[Node, Node]]:
        """key -> (key node, value node), refusing duplicate, unknown and missing keys."""
        if not isinstance(node, MappingNode):
            self.fail(node, f"{what} must be a mapping")
        try:
            self._scalars.flatten_mapping(node)
        except yaml.MarkedYAMLError as error:
            self.fail(node, f"not YAML: {error.problem}")
        keys: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = self._scalar(key_node)
            if not isinstance(key, str):
                self.fail(key_node, f"{what}: a key is a name (quote one YAML reads otherwise, e.g. 'NO')")
            if key in keys:
                self.fail(key_node, f"{what}: {key:.40} appears twice")
            if allowed is not None and key not in allowed:
                self.fail(key_node, f"{what}: unknown key {key:.40}; known: {', '.join(allowed)}")
            keys[key] = (key_node, value_node)
        for name in required:
            if name not in keys:
                self.fail(node, f"{what}: {name} is missing")
        return keys

    def sequence(self, node: Node, what: str, *, non_empty: bool = False) -> list[Node]:
        if not isinstance(node, SequenceNode):
            self.fail(node, f"{what} must be a list")
        if non_empty and not node.value:
            self.fail(node, f"{what} must not be empty")
        return list(node.value)

    def string(self, node: Node, what: str, choices: tuple[str, ...] | None = None) -> str:
        value = self._scalar(node)
        if not isinstance(value, str) or (choices is not None and value not in choices):
            self.fail(node, f"{what} must be one of {', '.join(choices)}" if choices else f"{what} must be text")
        return value

    def distinct(self, node: Node, what: str, choices: tuple[str, ...], *, non_empty: bool = True) -> tuple[str, ...]:
        values = tuple(self.string(item, what, choices) for item in self.sequence(node, what, non_empty=non_empty))
        if len(values) != len(set(values)):
            self.fail(node, f"{what}: each one once")
        return values

    def integer(self, node: Node, what: str, low: int, high: int) -> int:
        value = self._scalar(node)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            self.fail(node, f"{what} must be a whole number from {low} to {high}")
        return value

    def boolean(self, node: Node, what: str) -> bool:
        value = self._scalar(node)
        if not isinstance(value, bool):
            self.fail(node, f"{what} must be true or false")
        return value

    def _scalar(self, node: Node) -> object:
        if not isinstance(node, ScalarNode):
            self.fail(node, "expected a single value here")
        return self._scalars.construct_object(node)
