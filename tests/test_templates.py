"""Notification texts: every kind on every channel in every language, SMS in
one GSM-7 segment, HTML escaped, catalogues complete, and nothing but the
allowed values ever reaching a template."""
from __future__ import annotations

import re
import shutil

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po, write_po
from prometheus_client import REGISTRY

from services.notifications.adapters import gsm7
from services.notifications.adapters.templates import (
    CHANNELS, KINDS, LOCALES, TEMPLATES, Renderer, load_whatsapp,
)

SITE = "https://warmi.cooperativa-ejemplo.org.pe"
CASE = {  # the longest realistic values
    "case_code": "ABCDEF-2026-9999",
    "link": f"{SITE}/console/cases/6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f",
    "due_at": "2026-11-20 09:00",
    "timezone": "America/Guayaquil",
    "rung": "supervisor",
}
ACK = f"{SITE}/a/" + "Qx7-" * 7 + "Zk"
DIGEST = {"open_cases": 9999, "due_this_week": 9999, "overdue": 9999, "unacknowledged": 9999,
          "link": f"{SITE}/console/", "timezone": "America/Guayaquil"}
CATALOGUES = ("es", "en")


def values(kind: str, *, ack: bool = False) -> dict:
    return dict(DIGEST if kind == "digest" else CASE, ack_link=ACK if ack else None)


def fallbacks(kind: str, locale: str) -> float:
    return REGISTRY.get_sample_value("warmi_notification_template_fallbacks_total",
                                     {"kind": kind, "locale": locale}) or 0.0


@pytest.fixture(scope="module")
def renderer():
    return Renderer()


def test_the_ack_link_of_these_tests_is_as_long_as_a_real_one():
    assert len(ACK) == len(f"{SITE}/a/") + 30 == 73 and len(CASE["link"]) == 91


@pytest.mark.parametrize("ack", [False, True], ids=["normal", "urgent"])
@pytest.mark.parametrize("locale", CATALOGUES)
@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_on_every_channel_in_spanish_and_english(renderer, kind, channel, locale, ack):
    before = fallbacks(kind, locale)
    out = renderer.render(kind, channel, locale, fallback_locale="es", values=values(kind, ack=ack))
    other = renderer.render(kind, channel, "en" if locale == "es" else "es", fallback_locale="es",
                            values=values(kind, ack=ack))

    assert out.channel == channel and out.kind == kind
    shown = " ".join(filter(None, (out.subject, out.text, out.html)))
    assert shown.strip() and "None" not in shown and "%(" not in shown
    assert out.text != other.text  # really translated
    if kind == "digest":
        assert "9999" in out.text and CASE["case_code"] not in shown
    else:
        assert CASE["case_code"] in out.text and out.case_code == CASE["case_code"]
        assert out.link == CASE["link"]
    assert (ACK in out.text) is ack
    if channel == "email":
        assert out.subject.startswith("[Warmi] ") and "\n" not in out.subject
        assert not out.text.startswith("[Warmi]") and out.html.startswith("<!DOCTYPE html>")
        assert f'<html lang="{locale}">' in out.html and (ACK in out.html) is ack
        assert {"es": "no contiene datos de la sobreviviente", "en": "holds no survivor details"}[locale] in out.text
    else:
        assert out.subject == "" and out.html is None
    if channel == "whatsapp":
        assert out.language == locale
        assert out.template == f"warmi_{kind}" + ("_ack" if ack else "")
        assert all(p and "\n" not in p for p in out.parameters)
        assert (ACK in out.parameters) is ack
    else:
        assert out.template is None and out.parameters == ()
    assert fallbacks(kind, locale) == before


@pytest.mark.parametrize("kind", KINDS)
def test_the_webhook_carries_the_sms_text(renderer, kind):
    sms = renderer.render(kind, "sms", "es", fallback_locale="es", values=values(kind))
    hook = renderer.render(kind, "webhook", "es", fallback_locale="es", values=values(kind))
    assert hook.text == sms.text and (hook.kind, hook.case_code, hook.link) == (kind, sms.case_code, sms.link)


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_language_without_a_catalogue_falls_back_to_the_organisations_and_is_counted(renderer, kind, channel):
    before = fallbacks(kind, "qu")
    quechua = renderer.render(kind, channel, "qu", fallback_locale="en", values=values(kind))
    english = renderer.render(kind, channel, "en", fallback_locale="es", values=values(kind))
    assert quechua == english
    assert fallbacks(kind, "qu") == before + 1

    nowhere = renderer.render(kind, channel, "qu", fallback_locale="ay", values=values(kind))
    spanish = renderer.render(kind, channel, "es", fallback_locale="es", values=values(kind))
    assert nowhere == spanish
    assert fallbacks(kind, "qu") == before + 2


def test_a_language_that_is_no_code_is_counted_under_other(renderer):
    before = fallbacks("case_closed", "other")
    renderer.render("case_closed", "sms", "Quechua de Cusco", fallback_locale="es", values=values("case_closed"))
    assert fallbacks("case_closed", "other") == before + 1


ALERTS = [kind for kind in KINDS if kind != "digest"]


@pytest.mark.parametrize("locale", CATALOGUES)
@pytest.mark.parametrize("kind,ack", [(k, a) for k in ALERTS for a in (False, True)] + [("digest", False)])
def test_every_sms_fits_one_gsm7_segment_with_the_longest_values(renderer, kind, ack, locale):
    text = renderer.render(kind, "sms", locale, fallback_locale="es", values=values(kind, ack=ack)).text
    encoding, septets, count = gsm7.segments(text)
    assert (encoding, count) == ("gsm7", 1), f"{kind} {locale}: {septets} septets in {encoding}"


def test_a_digest_that_asks_to_be_acknowledged_carries_its_link_even_over_two_segments(renderer):
    text = renderer.render("digest", "sms", "es", fallback_locale="es", values=values("digest", ack=True)).text
    assert text.endswith(f"Confirme que lo vio: {ACK}") and gsm7.segments(text)[0] == "gsm7"


def test_the_digest_says_only_its_four_counts(renderer):
    out = renderer.render("digest", "email", "es", fallback_locale="es",
                          values=dict(DIGEST, open_cases=3, due_this_week=2, overdue=1, unacknowledged=0))
    assert re.findall(r"\d+", out.text.split("https://")[0]) == ["3", "2", "1", "0"]
    assert out.case_code is None


def test_html_escapes_the_values_and_the_text_part_does_not(renderer):
    hostile = {**CASE, "case_code": '<b>"X"&</b>', "link": f'{SITE}/console/cases/1"><script>x</script>'}
    out = renderer.render("step_escalated", "email", "es", fallback_locale="es", values=hostile)
    assert "<b>" not in out.html and "<script>" not in out.html
    assert "&lt;b&gt;&#34;X&#34;&amp;&lt;/b&gt;" in out.html
    assert 'href="https://warmi.cooperativa-ejemplo.org.pe/console/cases/1&#34;&gt;&lt;script&gt;' in out.html
    assert '<b>"X"&</b>' in out.text and out.subject.endswith("requiere su atención")
    assert "presidenta" not in out.text and "persona supervisora" in out.text


@pytest.mark.parametrize("rung,role", [("president", "presidenta del comité"), ("case_lead", "responsable del caso"),
                                       ("focal_point", "punto focal"), ("supervisor", "persona supervisora")])
def test_an_escalated_step_names_the_role_it_now_falls_to(renderer, rung, role):
    out = renderer.render("step_escalated", "email", "es", fallback_locale="es", values=dict(CASE, rung=rung))
    assert f"como {role}." in out.text


@pytest.mark.parametrize("bad,reason", [
    ({"survivor_name": "x"}, "may not carry: survivor_name"),
    ({"narrative": "x", "age": 14}, "may not carry: age, narrative"),
    ({"case_code": {"code": "x"}}, "case_code must be a single line"),
    ({"case_code": "ABC\r\nBcc: x"}, "case_code must be a single line"),
    ({"rung": "María Quispe"}, "rung must be a rung"),
    ({"overdue": True}, "overdue must be a count"),
    ({"overdue": -1}, "overdue must be a count"),
    ({"case_code": None}, "step_escalated needs case_code"),
    ({"due_at": ""}, "step_escalated needs due_at"),
])
def test_a_value_outside_the_allowed_set_is_refused_without_showing_it(renderer, bad, reason):
    with pytest.raises(ValueError) as refused:
        renderer.render("step_escalated", "sms", "es", fallback_locale="es", values={**CASE, **bad})
    assert reason in str(refused.value)
    assert "María" not in str(refused.value) and "Bcc" not in str(refused.value)


def test_an_unknown_kind_or_channel_is_refused(renderer):
    with pytest.raises(ValueError, match="kind"):
        renderer.render("case_deleted", "email", "es", fallback_locale="es", values=CASE)
    with pytest.raises(ValueError, match="channel"):
        renderer.render("case_opened", "telegram", "es", fallback_locale="es", values=CASE)


def _catalogue(locale: str):
    with (LOCALES / locale / "LC_MESSAGES" / "messages.po").open("rb") as file:
        return read_po(file)


def _template_ids() -> set[str]:
    with (LOCALES / "babel.cfg").open() as file:
        method_map, options_map = parse_mapping_cfg(file)
    return {message if isinstance(message, str) else message[0]
            for _, _, message, _, _ in extract_from_dir(TEMPLATES, method_map, options_map)}


def test_messages_pot_holds_exactly_the_messages_of_the_templates():
    with (LOCALES / "messages.pot").open("rb") as file:
        pot = {m.id for m in read_po(file) if m.id}
    assert pot == _template_ids() and len(pot) > 50


@pytest.mark.parametrize("locale", CATALOGUES)
def test_the_catalogue_translates_every_message_and_none_is_fuzzy(locale):
    with (LOCALES / "messages.pot").open("rb") as file:
        pot = {m.id for m in read_po(file) if m.id}
    catalogue = _catalogue(locale)
    messages = [m for m in catalogue if m.id]
    assert {m.id for m in messages} == pot and not catalogue.obsolete
    assert [m.id for m in messages if not m.string or m.fuzzy] == []
    for m in messages:  # the same placeholders, or rendering would fail
        assert sorted(re.findall(r"%\(\w+\)s", m.string)) == sorted(re.findall(r"%\(\w+\)s", m.id)), m.id


def test_a_partial_catalogue_says_what_it_has_and_the_rest_in_spanish(tmp_path):
    for locale in CATALOGUES:
        shutil.copytree(LOCALES / locale, tmp_path / locale)
    quechua = _catalogue("es")
    for message in quechua:
        if message.id:
            message.string = ""
    quechua["Overdue steps:"].string = "Pasakusqa ruraykuna:"
    quechua["Open cases:"].string = "QUECHUA FUZZY"
    quechua["Open cases:"].flags.add("fuzzy")
    (tmp_path / "qu" / "LC_MESSAGES").mkdir(parents=True)
    with (tmp_path / "qu" / "LC_MESSAGES" / "messages.po").open("wb") as file:
        write_po(file, quechua)

    before = fallbacks("digest", "qu")
    out = Renderer(locales=tmp_path).render("digest", "email", "qu", fallback_locale="en", values=values("digest"))
    assert "Pasakusqa ruraykuna: 9999" in out.text and "Casos abiertos: 9999" in out.text
    assert "FUZZY" not in out.text and '<html lang="qu">' in out.html
    assert fallbacks("digest", "qu") == before


def test_a_renderer_without_a_spanish_catalogue_refuses_to_start(tmp_path):
    shutil.copytree(LOCALES / "en", tmp_path / "en")
    with pytest.raises(ValueError, match="no es catalogue"):
        Renderer(locales=tmp_path)


def test_every_whatsapp_template_fills_its_parameters_in_spanish_and_english():
    templates = load_whatsapp(TEMPLATES / "whatsapp.yaml")
    assert set(templates) == set(KINDS)
    for kind, pair in templates.items():
        for variant, template in pair.items():
            assert set(template.bodies) == {"es", "en"}
            for body in template.bodies.values():
                assert not re.match(r"\{\{\d+\}\}", body) and not re.search(r"\{\{\d+\}\}$", body)
                assert "no contiene datos de la sobreviviente" in body or "holds no survivor details" in body


@pytest.mark.parametrize("before,after,reason", [
    ("Confirme que lo vio: {{5}}", "Confirme que lo vio.", "does not fill its 5 parameters"),
    ("parameters: [case_code, link]", "parameters: [case_code, rung]", "parameters its kind does not always have"),
    ("parameters: [case_code, link, ack_link]", "parameters: [case_code, link]", "its kind does not always have"),
])
def test_a_whatsapp_template_that_cannot_be_filled_is_refused(tmp_path, before, after, reason):
    text = (TEMPLATES / "whatsapp.yaml").read_text(encoding="utf-8")
    broken = text.replace(before, after, 1)
    assert broken != text
    (tmp_path / "whatsapp.yaml").write_text(broken, encoding="utf-8")
    with pytest.raises(ValueError, match=reason):
        load_whatsapp(tmp_path / "whatsapp.yaml")


# --- GSM 03.38 ---------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("", ("gsm7", 0, 1)),
    ("a" * 160, ("gsm7", 160, 1)),
    ("a" * 161, ("gsm7", 161, 2)),
    ("a" * 306, ("gsm7", 306, 2)),
    ("a" * 307, ("gsm7", 307, 3)),
    ("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ!¡¿ÄÖÑÜ§äöñüà\n", ("gsm7", 43, 1)),
])
def test_the_basic_set_costs_one_septet_each(text, expected):
    assert gsm7.segments(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("€" * 80, ("gsm7", 160, 1)),
    ("€" * 81, ("gsm7", 162, 2)),
    ("^{}\\[~]|\f", ("gsm7", 18, 1)),
    ("a" * 159 + "[", ("gsm7", 161, 2)),
    # an escape and its character never straddle two parts: 152 + (2 + 151) + 1
    ("a" * 152 + "€" + "a" * 152, ("gsm7", 306, 3)),
])
def test_the_extension_table_costs_two_septets_and_is_never_split(text, expected):
    assert gsm7.segments(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Atención", ("ucs2", 8, 1)),
    ("ç", ("ucs2", 1, 1)),  # only the capital Ç is in the basic set
    ("á" * 70, ("ucs2", 70, 1)),
    ("á" * 71, ("ucs2", 71, 2)),
    ("á" * 134, ("ucs2", 134, 2)),
    ("á" * 135, ("ucs2", 135, 3)),
    ("😀", ("ucs2", 2, 1)),
    # a surrogate pair never straddles two parts: 66 + (2 + 65) + 1
    ("á" * 66 + "😀" + "á" * 66, ("ucs2", 134, 3)),
])
def test_any_other_character_makes_the_whole_text_ucs2(text, expected):
    assert gsm7.segments(text) == expected
