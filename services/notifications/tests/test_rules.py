"""The notification rules as data: the defaults, every check of a rules file
(each names its line), per-organisation overrides, reloading, freezing."""
import json
import os
from pathlib import Path

import pytest

from services.notifications.domain.rules import (
    Rule, RulesHolder, RulesInvalid, load_rules, rule_from_json, rule_to_json,
)

DEFAULTS = Path(__file__).resolve().parents[1] / "rules.yaml"


def one_rule(**fields) -> str:
    """A rules file of one rule. Lines: name 3, event 4, to 5, urgency 6,
    channels 7, kind 8, then any further field in the order given; a field
    given as None is left out."""
    body = {"name": "r", "event": "case_opened", "to": "[president]", "urgency": "normal",
            "channels": "[[email]]", "kind": "case_opened"}
    body.update(fields)
    lines = ["version: 1", "rules:"]
    for key, value in body.items():
        if value is not None:
            lines.append(("  - " if len(lines) == 2 else "    ") + f"{key}: {value}")
    return "\n".join(lines) + "\n"


URGENT = {"urgency": "urgent", "ack_wait_minutes": "30"}  # ack_wait_minutes on line 9

# two rules (lines 3-8 and 9-14), then an organisation CEC whose entry starts on line 17
BASE = """\
version: 1
rules:
  - name: opened
    event: case_opened
    to: [president]
    urgency: normal
    channels: [[email]]
    kind: case_opened
  - name: digest
    event: digest
    to: [president]
    urgency: normal
    channels: [[email]]
    kind: digest
organizations:
  CEC:
"""
RULES_ONLY = BASE[:BASE.index("organizations:")]


def write(directory: Path, text: str, name: str = "rules.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def refusal(path: Path, **kwargs) -> RulesInvalid:
    with pytest.raises(RulesInvalid) as caught:
        load_rules(path, **kwargs)
    return caught.value


INVALID = [
    # the file as a whole
    ("not_yaml", "version: 1\nrules: x: y\n", 2, "not YAML: mapping values are not allowed here"),
    ("empty", "", 1, "empty"),
    ("not_a_mapping", "- version\n", 1, "must be a mapping"),
    ("version", one_rule().replace("version: 1", "version: 2"), 1, "version must be 1"),
    ("version_text", one_rule().replace("version: 1", "version: one"), 1, "version must be a whole number"),
    ("no_rules", "version: 1\n", 1, "rules is missing"),
    ("rules_not_a_list", "version: 1\nrules: {}\n", 2, "rules must be a list"),
    ("unknown_top_key", one_rule() + "colour: red\n", 9, "unknown key colour"),
    ("key_twice", one_rule() + "version: 1\n", 9, "version appears twice"),
    ("digest_weekday", one_rule() + "digest: {weekday: 7, hour: 8}\n", 9, "digest.weekday"),
    ("digest_hour", one_rule() + "digest: {weekday: 0, hour: 24}\n", 9, "digest.hour"),
    ("digest_missing_hour", one_rule() + "digest: {weekday: 0}\n", 9, "hour is missing"),
    ("caps_negative", one_rule() + "caps: {sms: -1}\n", 9, "caps.sms"),
    ("caps_unknown_channel", one_rule() + "caps: {email: 5}\n", 9, "unknown key email"),
    ("ack_link_days", one_rule() + "ack_link_days: 0\n", 9, "ack_link_days"),
    ("ack_link_days_bool", one_rule() + "ack_link_days: true\n", 9, "ack_link_days"),
    # a rule
    ("rule_not_a_mapping", "version: 1\nrules:\n  - r\n", 3, "a rule must be a mapping"),
    ("name_twice", one_rule() + "  - {name: r, event: case_closed, to: [president], urgency: normal, "
                                "channels: [[email]], kind: case_closed}\n", 9, "a second rule named r"),
    ("name_shape", one_rule(name="'Case Opened'"), 3, "lower case letters"),
    ("unknown_rule_key", one_rule(colour="red"), 9, "unknown key colour"),
    ("enabled_in_defaults", one_rule(enabled="false"), 9, "unknown key enabled"),
    ("missing_kind", one_rule(kind=None), 3, "kind is missing"),
    ("missing_channels", one_rule(channels=None), 3, "channels is missing"),
    ("event", one_rule(event="case_updated"), 4, "event must be one of"),
    ("when_key", one_rule(when="{minor: true}"), 9, "minor is not a condition"),
    ("when_value", one_rule(when="{risk_level: extreme}"), 9, "when.risk_level must be one of low, medium, high"),
    ("when_not_on_event", one_rule(event="case_closed", kind="case_closed", when="{risk_level: high}"), 9,
     "risk_level is known only on case_opened, risk_changed"),
    ("to_unknown", one_rule(to="[mother]"), 5, "to must be one of"),
    ("to_empty", one_rule(to="[]"), 5, "to must not be empty"),
    ("to_twice", one_rule(to="[president, president]"), 5, "each one once"),
    ("to_not_a_list", one_rule(to="president"), 5, "to must be a list"),
    ("rung_elsewhere", one_rule(to="[rung]"), 5, "rung is known only on step_escalated"),
    ("responsible_elsewhere", one_rule(to="[responsible]"), 5, "responsible is known only on step_due_soon"),
    ("urgency", one_rule(urgency="high"), 6, "urgency must be one of normal, urgent, critical"),
    ("channels_empty", one_rule(channels="[]"), 7, "channels must not be empty"),
    ("chain_empty", one_rule(channels="[[]]"), 7, "a chain of channels must not be empty"),
    ("chain_not_a_list", one_rule(channels="[email]"), 7, "a chain of channels must be a list"),
    ("channel_unknown", one_rule(channels="[[pigeon]]"), 7, "a chain of channels must be one of"),
    ("channel_in_two_chains", one_rule(channels="[[sms, email], [email]]"), 7, "one chain only"),
    ("channel_twice_in_chain", one_rule(channels="[[sms, sms]]"), 7, "each one once"),
    ("webhook_with_others", one_rule(to="[organization]", channels="[[webhook, email]]"), 7,
     "webhook stands in a chain of its own"),
    ("organization_without_webhook", one_rule(to="[president, organization]"), 7,
     "the webhook chain and the organization audience go together"),
    ("webhook_without_organization", one_rule(channels="[[email], [webhook]]"), 7,
     "the webhook chain and the organization audience go together"),
    ("kind", one_rule(kind="case_updated"), 8, "kind must be one of"),
    ("digest_kind_on_a_case_event", one_rule(kind="digest"), 8, "digest is the kind of the digest event"),
    ("digest_event_other_kind", one_rule(event="digest"), 8, "digest is the kind of the digest event"),
    ("digest_urgent", one_rule(event="digest", kind="digest", **URGENT), 6, "a digest is normal"),
    ("ack_wait_on_normal", one_rule(ack_wait_minutes="30"), 9, "only urgent and critical"),
    ("ladder_on_normal", one_rule(ladder="[president]"), 9, "only urgent and critical"),
    ("urgent_without_ack_wait", one_rule(urgency="critical"), 3, "ack_wait_minutes is missing"),
    ("ack_wait_zero", one_rule(**{**URGENT, "ack_wait_minutes": "0"}), 9, "from 1 to 10080"),
    ("ack_wait_over_a_week", one_rule(**{**URGENT, "ack_wait_minutes": "10081"}), 9, "from 1 to 10080"),
    ("ack_wait_text", one_rule(**{**URGENT, "ack_wait_minutes": "30m"}), 9, "ack_wait_minutes must be a whole"),
    ("ladder_order", one_rule(**URGENT, ladder="[president, case_lead]"), 10, "climbs in the order"),
    ("ladder_unknown", one_rule(**URGENT, ladder="[mother]"), 10, "ladder must be one of"),
    ("ladder_empty", one_rule(**URGENT, ladder="[]"), 10, "ladder must not be empty"),
    ("two_digests", one_rule(event="digest", kind="digest")
     + "  - {name: again, event: digest, to: [supervisor], urgency: normal, channels: [[email]], kind: digest}\n",
     9, "a second digest rule"),
    # organisations
    ("organization_code", BASE.replace("CEC:", "cec: {}"), 16, "not an organisation code"),
    ("organization_code_read_as_no", BASE.replace("CEC:", "NO: {}"), 16, "quote one YAML reads otherwise"),
    ("organization_key", BASE + "    colour: red\n", 17, "unknown key colour"),
    ("organization_webhook_http", BASE + "    webhook_url: http://example.org/hook\n", 17, "https://"),
    ("organization_webhook_no_host", BASE + "    webhook_url: https://\n", 17, "https://"),
    ("organization_caps", BASE + "    caps: {whatsapp: many}\n", 17, "caps.whatsapp"),
    ("organization_digest", BASE + "    digest: {weekday: -1, hour: 8}\n", 17, "digest.weekday"),
    ("switch_off_unknown", BASE + "    rules:\n      - {name: nothing, enabled: false}\n", 18,
     "no default rule named nothing"),
    ("switch_off_with_more", BASE + "    rules:\n      - name: opened\n        enabled: false\n"
                                    "        kind: case_opened\n", 20, "has only its name"),
    ("enabled_not_boolean", BASE + "    rules:\n      - {name: opened, enabled: maybe}\n", 18,
     "enabled must be true or false"),
    ("override_named_twice", BASE + "    rules:\n      - {name: opened, enabled: false}\n"
                                    "      - {name: opened, enabled: false}\n", 19, "a second rule named opened"),
    ("override_invalid_rule", BASE + "    rules:\n      - {name: opened, event: case_opened, to: [president], "
                                     "urgency: urgent, channels: [[email]], kind: case_opened}\n", 18,
     "ack_wait_minutes is missing"),
    ("second_digest_for_one_organization", BASE + "    rules:\n      - {name: opened, event: digest, "
     "to: [supervisor], urgency: normal, channels: [[email]], kind: digest}\n", 18, "a second digest rule"),
]


@pytest.mark.parametrize("text,line,reason", [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_every_check_of_a_rules_file_names_its_line_and_reason(tmp_path, text, line, reason):
    path = write(tmp_path, text)
    error = refusal(path)
    assert (error.line, error.path) == (line, path), error
    assert reason in error.reason
    assert str(error) == f"{path}:{line}: {error.reason}"


def test_a_file_that_cannot_be_read_is_refused_like_a_bad_one(tmp_path):
    error = refusal(tmp_path / "missing.yaml")
    assert error.line == 1 and "cannot be read" in error.reason


def test_the_defaults_are_the_rules_of_the_brief():
    rules = load_rules(DEFAULTS)
    wp, mail, ladder = ("whatsapp", "sms"), ("email",), ("case_lead", "president", "supervisor")

    def rule(name, event, to, urgency, channels, kind, when=None, wait=None):
        return Rule(name=name, event=event, when=when or {}, to=to, urgency=urgency, channels=channels,
                    ack_wait_minutes=wait, ladder=ladder if wait else (), kind=kind)

    expected = [
        rule("critical_case_opened", "case_opened", ("president", "supervisor"), "critical", (wp, mail),
             "case_critical", {"risk_level": "high"}, 30),
        rule("risk_high", "risk_changed", ("president", "supervisor"), "critical", (wp, mail), "risk_high",
             {"risk_level": "high"}, 30),
        rule("case_opened", "case_opened", ("president",), "normal", (mail,), "case_opened"),
        rule("case_classified", "case_classified", ("case_lead",), "normal", (mail,), "case_classified"),
        rule("step_due_soon", "step_due_soon", ("responsible",), "normal", (("whatsapp", "sms", "email"),),
             "step_due_soon"),
        rule("step_overdue", "step_overdue", ("responsible", "president"), "urgent", (wp, mail), "step_overdue",
             wait=240),
        rule("step_escalated", "step_escalated", ("rung",), "urgent", (wp, mail), "step_escalated", wait=240),
        rule("case_closed", "case_closed", ("case_lead", "president"), "normal", (mail,), "case_closed"),
        rule("case_reopened", "case_reopened", ("case_lead", "president"), "normal", (mail,), "case_reopened"),
        rule("weekly_digest", "digest", ("president",), "normal", (mail,), "digest"),
    ]
    assert [r for e in expected for r in rules.matching(e.event, e.when, None) if r.name == e.name] == expected
    assert rules.version == 1 and rules.ack_link_days == 7
    assert rules.digest_schedule(None) == (0, 8) and rules.digest_schedule("CEC") == (0, 8)
    assert rules.caps("CEC") == {"sms": 300, "whatsapp": 300}
    assert rules.webhook_url("CEC") is None
    assert rules.digest_rule("CEC") == expected[-1]


@pytest.mark.parametrize("event,data,names", [
    ("case_opened", {"risk_level": "high"}, ["critical_case_opened", "case_opened"]),
    ("case_opened", {"risk_level": "medium"}, ["case_opened"]),
    ("case_opened", {"risk_level": None}, ["case_opened"]),
    ("case_opened", {}, ["case_opened"]),
    ("risk_changed", {"risk_level": "high"}, ["risk_high"]),
    ("risk_changed", {"risk_level": "low"}, []),
    ("step_overdue", {"responsible": "case_lead"}, ["step_overdue"]),
    ("step_escalated", {"rung": "president"}, ["step_escalated"]),
    ("case_updated", {}, []),
])
def test_an_event_meets_every_default_rule_it_matches(event, data, names):
    assert [r.name for r in load_rules(DEFAULTS).matching(event, data, "CEC")] == names


def test_an_organisation_replaces_switches_off_and_adds_rules_and_settles_its_own_caps(tmp_path):
    path = write(tmp_path, BASE + """\
    caps: {sms: 50}
    digest: {weekday: 4, hour: 17}
    webhook_url: https://cec.example.org/warmi
    rules:
      - {name: opened, event: case_opened, to: [president, supervisor], urgency: normal,
         channels: [[sms]], kind: case_opened}
      - {name: digest, enabled: false}
      - {name: to_the_office, event: case_closed, to: [organization], urgency: normal,
         channels: [[webhook]], kind: case_closed}
  MIN:
    rules:
      - {name: opened, enabled: true, event: case_opened, to: [focal_point], urgency: critical,
         channels: [[email]], ack_wait_minutes: 5, ladder: [focal_point, supervisor], kind: case_critical}
""" + "caps: {whatsapp: 10}\ndigest: {weekday: 2, hour: 9}\n")
    rules = load_rules(path)
    replaced = rules.matching("case_opened", {}, "CEC")
    assert [(r.name, r.to, r.channels) for r in replaced] == [("opened", ("president", "supervisor"), (("sms",),))]
    assert rules.digest_rule("CEC") is None and rules.matching("digest", {}, "CEC") == []
    assert [r.to for r in rules.matching("case_closed", {}, "CEC")] == [("organization",)]
    assert rules.caps("CEC") == {"sms": 50, "whatsapp": 10}
    assert rules.digest_schedule("CEC") == (4, 17)
    assert rules.webhook_url("CEC") == "https://cec.example.org/warmi"

    (minor,) = rules.matching("case_opened", {}, "MIN")
    assert (minor.urgency, minor.ack_wait_minutes, minor.ladder) == ("critical", 5, ("focal_point", "supervisor"))
    assert rules.digest_rule("MIN").name == "digest"
    assert (rules.caps("MIN"), rules.digest_schedule("MIN"), rules.webhook_url("MIN")) == (
        {"sms": 300, "whatsapp": 10}, (2, 9), None)
    # organisations without an entry, and events without one, follow the defaults
    for code in ("XYZ", None):
        assert [r.name for r in rules.matching("case_opened", {}, code)] == ["opened"]
        assert rules.digest_rule(code).name == "digest" and rules.webhook_url(code) is None


def test_an_override_file_per_organisation_is_read_and_checked_like_an_entry(tmp_path):
    path = write(tmp_path, BASE.replace("  CEC:\n", "  CEC: {}\n"))
    overrides = tmp_path / "organizations"
    overrides.mkdir()
    write(overrides, "webhook_url: http://127.0.0.1:8999/hook\nrules:\n  - {name: digest, enabled: false}\n",
          "MIN.yaml")
    write(overrides, "not an override, not read\n", "README.txt")
    rules = load_rules(path, overrides_dir=overrides)
    assert rules.webhook_url("MIN") == "http://127.0.0.1:8999/hook"
    assert rules.digest_rule("MIN") is None and rules.digest_rule("CEC").name == "digest"
    assert load_rules(path, overrides_dir=tmp_path / "none").digest_rule("MIN").name == "digest"

    bad = write(overrides, "caps: {sms: 10}\nrules:\n  - {name: opened, event: case_opened, to: [president], "
                           "urgency: loud, channels: [[email]], kind: case_opened}\n", "SUR.yaml")
    error = refusal(path, overrides_dir=overrides)
    assert (error.path, error.line) == (bad, 3) and "urgency" in error.reason
    bad.unlink()

    write(overrides, "caps: {sms: 10}\n", "CEC.yaml")
    error = refusal(path, overrides_dir=overrides)
    assert error.line == 1 and "CEC is configured in" in error.reason
    (overrides / "CEC.yaml").unlink()

    misnamed = write(overrides, "caps: {sms: 10}\n", "cec-north.yaml")
    error = refusal(path, overrides_dir=overrides)
    assert (error.path, error.line) == (misnamed, 1) and "organisation code" in error.reason


def test_a_second_digest_is_found_in_the_override_that_adds_it(tmp_path):
    # the replaced rule comes first in the organisation's rules, the default digest after it:
    # the error still points at the override, in the override's file
    path = write(tmp_path, RULES_ONLY)
    overrides = tmp_path / "organizations"
    overrides.mkdir()
    override = write(overrides, "rules:\n  - {name: opened, event: digest, to: [supervisor], urgency: normal,\n"
                                "     channels: [[email]], kind: digest}\n", "CEC.yaml")
    error = refusal(path, overrides_dir=overrides)
    assert (error.path, error.line) == (override, 2) and "a second digest rule" in error.reason


def test_the_holder_keeps_the_rules_in_force_when_a_change_does_not_validate(tmp_path):
    path = write(tmp_path, RULES_ONLY)
    overrides = tmp_path / "organizations"
    errors: list[RulesInvalid] = []
    holder = RulesHolder(path, overrides, on_error=errors.append)
    first = holder.current
    assert holder.reload_if_changed() is False and holder.current is first

    def edit(file: Path, text: str, stamp: int) -> None:
        file.write_text(text)
        os.utime(file, ns=(stamp, stamp))  # a distinct time, however fast the test runs

    edit(path, RULES_ONLY.replace("kind: digest", "kind: case_opened"), 10**18)
    assert holder.reload_if_changed() is False
    assert holder.current is first
    assert [(e.path, e.line) for e in errors] == [(path, 14)]
    assert holder.reload_if_changed() is False and len(errors) == 1  # reported once, not on every look

    edit(path, RULES_ONLY.replace("[president]", "[supervisor]"), 2 * 10**18)
    assert holder.reload_if_changed() is True
    assert holder.current.digest_rule(None).to == ("supervisor",)

    overrides.mkdir()
    edit(overrides / "CEC.yaml", "caps: {sms: 1}\n", 3 * 10**18)
    assert holder.reload_if_changed() is True and holder.current.caps("CEC")["sms"] == 1
    (overrides / "CEC.yaml").unlink()
    assert holder.reload_if_changed() is True and holder.current.caps("CEC")["sms"] == 300

    good = holder.current
    path.write_text("version: 1\n")
    assert holder.reload() is False and holder.current is good and errors[-1].line == 1


def test_the_holder_does_not_start_on_rules_that_do_not_validate(tmp_path):
    with pytest.raises(RulesInvalid):
        RulesHolder(write(tmp_path, "version: 1\n"), on_error=pytest.fail)


def test_a_rule_frozen_as_json_comes_back_the_same():
    for rule in [r for e in ("case_opened", "risk_changed", "step_overdue", "digest")
                 for r in load_rules(DEFAULTS).matching(e, {"risk_level": "high"}, None)]:
        frozen = json.loads(json.dumps(rule_to_json(rule)))
        assert rule_from_json(frozen) == rule
    assert rule_to_json(load_rules(DEFAULTS).digest_rule(None)) == {
        "name": "weekly_digest", "event": "digest", "when": {}, "to": ["president"], "urgency": "normal",
        "channels": [["email"]], "ack_wait_minutes": None, "ladder": [], "kind": "digest"}
