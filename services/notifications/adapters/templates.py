"""Notification texts: Jinja2 templates, translated with Babel catalogues.

What holds:

- A template receives only the values named in ``STRINGS`` and ``COUNTS``:
  a case code, console and acknowledgement links, a due time already in the
  organisation's zone, the zone's name, the rung an escalated step reached,
  and the digest's four counts. Any other name, a value of the wrong type, a
  string with a control character, or a rung off the ladder is refused with
  ``ValueError`` before anything is rendered, so no text can ever print a
  survivor's details. Error messages name values, never show them.
- A kind renders only with the values it needs (``NEEDS``).
- Texts are in the recipient's language if it has a catalogue (or, for
  WhatsApp, an approved template), else in the organisation's, else in
  Spanish; every such fallback is counted in
  ``warmi_notification_template_fallbacks_total{kind,locale}``. A message
  missing from a catalogue falls back to Spanish on its own.
- Catalogues are the ``.po`` files under ``locale/``, compiled in memory when
  the renderer is built: there is no build step and no ``.mo`` file.
- E-mail: the first line of ``<kind>/email.txt.j2`` is the subject, the rest
  the text part; ``<kind>/email.html.j2`` is the HTML part, autoescaped. SMS
  and webhook: ``<kind>/sms.txt.j2``, written to fit one GSM-7 SMS. WhatsApp:
  an approved template of ``whatsapp.yaml``, its parameters in order, and its
  body filled in as the text kept for the record.
"""
from __future__ import annotations

import io
import re
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

import yaml
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from servicekit.metrics import TEMPLATE_FALLBACKS
from services.notifications.adapters.channels.base import Outgoing

HERE = Path(__file__).resolve().parent.parent
TEMPLATES = HERE / "templates"
LOCALES = HERE / "locale"
DEFAULT_LOCALE = "es"

KINDS = ("case_opened", "case_critical", "risk_high", "case_classified", "step_due_soon", "step_overdue",
         "step_escalated", "case_closed", "case_reopened", "digest")
CHANNELS = ("email", "sms", "whatsapp", "webhook")
STRINGS = ("case_code", "link", "ack_link", "due_at", "timezone", "rung")
COUNTS = ("open_cases", "due_this_week", "overdue", "unacknowledged")
RUNGS = ("focal_point", "case_lead", "president", "supervisor")

_CASE = ("case_code", "link")
_STEP = _CASE + ("due_at", "timezone")
NEEDS: dict[str, tuple[str, ...]] = {
    "case_opened": _CASE, "case_critical": _CASE, "risk_high": _CASE, "case_classified": _CASE,
    "step_due_soon": _STEP, "step_overdue": _STEP, "step_escalated": _STEP + ("rung",),
    "case_closed": _CASE, "case_reopened": _CASE, "digest": COUNTS,
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLACEHOLDER = re.compile(r"\{\{(\d+)\}\}")


@dataclass(frozen=True)
class WhatsAppTemplate:
    """One template as approved by Meta: its name, the values that fill
    {{1}}, {{2}}, ... in order, and its body in each approved language."""

    name: str
    parameters: tuple[str, ...]
    bodies: dict[str, str]


class Renderer:
    """Renders a notification kind for one channel in one language. Built
    once per process: loading reads every catalogue and ``whatsapp.yaml``,
    and refuses a broken one at once."""

    def __init__(self, directory: Path = TEMPLATES, locales: Path = LOCALES):
        catalogues = {p.parent.parent.name: _translations(p) for p in sorted(locales.glob("*/LC_MESSAGES/messages.po"))}
        if DEFAULT_LOCALE not in catalogues:
            raise ValueError(f"{locales}: no {DEFAULT_LOCALE} catalogue")
        for locale, translations in catalogues.items():
            if locale != DEFAULT_LOCALE:
                translations.add_fallback(catalogues[DEFAULT_LOCALE])
        self.environments = {locale: _environment(directory, t) for locale, t in catalogues.items()}
        self.whatsapp = load_whatsapp(directory / "whatsapp.yaml")

    def render(self, kind: str, channel: str, locale: str, *, fallback_locale: str, values: dict) -> Outgoing:
        if kind not in KINDS:
            raise ValueError(f"unknown notification kind {kind!r}")
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")
        values = checked(kind, values)
        common = dict(kind=kind, case_code=values["case_code"], link=values["link"])
        if channel == "whatsapp":
            template = self.whatsapp[kind]["ack" if values["ack_link"] else "plain"]
            language = _choose(kind, locale, fallback_locale, template.bodies)
            parameters = tuple(str(values[name]) for name in template.parameters)
            text = _PLACEHOLDER.sub(lambda m: parameters[int(m.group(1)) - 1], template.bodies[language])
            return Outgoing(channel, "", text, template=template.name, language=language, parameters=parameters,
                            **common)
        language = _choose(kind, locale, fallback_locale, self.environments)
        environment = self.environments[language]
        context = dict(values, lang=language)
        if channel == "email":
            subject, _, text = _tidy(environment.get_template(f"{kind}/email.txt.j2").render(context)).partition("\n")
            html = environment.get_template(f"{kind}/email.html.j2").render(context).strip()
            return Outgoing(channel, subject, text.strip(), html=html, **common)
        text = environment.get_template(f"{kind}/sms.txt.j2").render(context)
        return Outgoing(channel, "", " ".join(text.split()), **common)  # one line: a newline is no cheaper


def checked(kind: str, values: dict) -> dict:
    """Every allowed value (those not given are None), once each is known to
    be safe to print; ValueError otherwise."""
    unknown = set(values) - set(STRINGS) - set(COUNTS)
    if unknown:
        raise ValueError(f"values a notification may not carry: {', '.join(sorted(unknown))}")
    full = {name: values.get(name) for name in STRINGS + COUNTS}
    for name in STRINGS:
        value = full[name]
        if value is not None and (not isinstance(value, str) or _CONTROL.search(value)):
            raise ValueError(f"{name} must be a single line of text")
    for name in COUNTS:
        value = full[name]
        if value is not None and (type(value) is not int or value < 0):
            raise ValueError(f"{name} must be a count")
    if full["rung"] is not None and full["rung"] not in RUNGS:
        raise ValueError("rung must be a rung of the ladder")
    missing = [name for name in NEEDS[kind] if full[name] in (None, "")]
    if missing:
        raise ValueError(f"{kind} needs {', '.join(missing)}")
    return full


def load_whatsapp(path: Path) -> dict[str, dict[str, WhatsAppTemplate]]:
    """``{kind: {"plain": template, "ack": template}}`` from ``whatsapp.yaml``;
    ValueError if a kind or a Spanish body is missing, a parameter is not
    among the values its kind needs (plus, for ``ack``, the acknowledgement
    link), or a body's placeholders are not exactly {{1}}..{{n}}."""
    kinds = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("kinds") or {}
    loaded = {}
    for kind in KINDS:
        pair = {}
        for variant in ("plain", "ack"):
            spec = (kinds.get(kind) or {}).get(variant)
            if not spec:
                raise ValueError(f"{path}: {kind} has no {variant} template")
            parameters = tuple(spec.get("parameters") or ())
            bodies = dict(spec.get("body") or {})
            allowed = set(NEEDS[kind]) | ({"ack_link"} if variant == "ack" else set())
            if not set(parameters) <= allowed or (variant == "ack") != ("ack_link" in parameters):
                raise ValueError(f"{path}: {kind}.{variant} has parameters its kind does not always have")
            if DEFAULT_LOCALE not in bodies:
                raise ValueError(f"{path}: {kind}.{variant} has no {DEFAULT_LOCALE} body")
            for language, body in bodies.items():
                numbers = sorted({int(n) for n in _PLACEHOLDER.findall(body)})
                if numbers != list(range(1, len(parameters) + 1)):
                    raise ValueError(
                        f"{path}: {kind}.{variant}.{language} does not fill its {len(parameters)} parameters")
            pair[variant] = WhatsAppTemplate(str(spec["name"]), parameters, bodies)
        loaded[kind] = pair
    return loaded


def _choose(kind: str, locale: str, fallback_locale: str, available: Container[str]) -> str:
    """The recipient's language if available, else the organisation's, else
    Spanish (always available); a fallback is counted."""
    if locale in available:
        return locale
    label = locale if isinstance(locale, str) and re.fullmatch(r"[a-z]{2,3}", locale) else "other"
    TEMPLATE_FALLBACKS.labels(kind, label).inc()
    return fallback_locale if fallback_locale in available else DEFAULT_LOCALE


def _translations(po: Path) -> Translations:
    with po.open("rb") as file:
        catalog = read_po(file)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)  # fuzzy and untranslated messages are left out
    compiled.seek(0)
    return Translations(fp=compiled)


def _environment(directory: Path, translations: Translations) -> Environment:
    environment = Environment(
        loader=FileSystemLoader(str(directory)), undefined=StrictUndefined, extensions=["jinja2.ext.i18n"],
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False, default=False),
        lstrip_blocks=True,
    )
    environment.policies["ext.i18n.trimmed"] = True  # as babel.cfg extracts them
    environment.install_gettext_translations(translations, newstyle=True)
    return environment


def _tidy(text: str) -> str:
    """Lines without trailing blanks, at most one empty line in a row: the
    lines a template's tags leave empty only ever separate paragraphs."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1]))
