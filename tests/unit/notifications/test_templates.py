"""Templates: locale fallback, the sandbox, the field allow-lists (no PHI), the SMS budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifications.templates import (
    SHIPPED_DIR,
    TemplateBudgetError,
    TemplateError,
    TemplateFieldError,
    TemplateLibrary,
    TemplateNotFound,
    TemplateSecurityError,
    locale_chain,
)

CTX = {"org_name": "Acme Clinic", "contact_phone": "555-0100"}
# Everything a careless caller might pass along with the allowed fields.
PHI = {"patient_name": "Maria Garcia", "reading": "192/124 mmHg", "diagnosis": "Hypertension",
       "birth_date": "1957-03-02", "program": "Heart Failure program", "medication": "lisinopril"}
PATIENT_TEMPLATES = ["alert_high", "alert_moderate", "alert_low", "reminder_reading", "reminder_questionnaire"]
CONSENT_TEMPLATES = ["consent_help", "consent_stop", "consent_start"]


@pytest.fixture(scope="module")
def lib() -> TemplateLibrary:
    return TemplateLibrary()


def custom(tmp_path: Path, files: dict[str, str], catalog: str | None = None) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if catalog:
        (tmp_path / "catalog.yaml").write_text(catalog, encoding="utf-8")
    return tmp_path


def test_locale_chain() -> None:
    assert locale_chain("es-MX") == ["es-MX", "es", "en"]
    assert locale_chain("es_mx") == ["es-MX", "es", "en"]
    assert locale_chain("en-US") == ["en-US", "en"]
    assert locale_chain(None) == ["en"]
    with pytest.raises(TemplateError, match="not a locale"):
        locale_chain("../../etc")


def test_fallback_es_mx_to_es_and_unknown_to_en(lib) -> None:
    assert lib.render("alert_moderate", "sms", "es-MX", CTX).locale == "es"
    assert "llámenos" in lib.render("alert_moderate", "sms", "es-MX", CTX).body
    fr = lib.render("alert_moderate", "sms", "fr-CA", CTX)
    assert fr.locale == "en" and fr.body.startswith("Acme Clinic: please call us today")


def test_custom_directory_overrides_per_locale(tmp_path) -> None:
    d = custom(tmp_path, {"en/alert_moderate.sms.j2": "{{ org_name }}: call us, {{ contact_phone }}. STOP to end."})
    lib = TemplateLibrary([d])
    assert lib.render("alert_moderate", "sms", "en", CTX).body == "Acme Clinic: call us, 555-0100. STOP to end."
    # A Spanish speaker still gets the shipped Spanish text, not the customized English one.
    assert lib.render("alert_moderate", "sms", "es-MX", CTX).locale == "es"


def test_every_shipped_template_exists_in_english_and_spanish_and_passes_check(lib) -> None:
    assert lib.check() == []
    have = set(lib.available())
    for locale in ("en", "es"):
        for name in [*PATIENT_TEMPLATES, "escalation"]:
            assert (name, "sms", locale) in have and (name, "email", locale) in have
            assert (SHIPPED_DIR / locale / f"{name}.email.html.j2").is_file()
        for name in CONSENT_TEMPLATES:
            assert (name, "sms", locale) in have


@pytest.mark.parametrize("locale", ["en", "es-MX"])
@pytest.mark.parametrize("name", PATIENT_TEMPLATES + CONSENT_TEMPLATES)
def test_patient_messages_carry_no_phi_even_when_handed_some(lib, name, locale) -> None:
    context = {**lib.catalog.samples, **PHI}
    channels = ["sms"] if name in CONSENT_TEMPLATES else ["sms", "email"]
    for channel in channels:
        rendered = lib.render(name, channel, locale, context)
        text = " ".join(filter(None, [rendered.body, rendered.subject, rendered.html]))
        for value in PHI.values():
            assert value not in text
        if channel == "sms" and name != "consent_stop":
            # every patient SMS says how to opt out (the TCPA healthcare-message exemption, FCC 15-72)
            assert "STOP" in text
    assert not {"patient_name", "reading", "diagnosis", "patient_label", "detail"} & lib.catalog.allowed(name, "sms")


def test_staff_sms_is_minimal_but_staff_email_may_carry_context(lib) -> None:
    context = {**lib.catalog.samples}
    sms = lib.render("escalation", "sms", "en", context)
    assert context["ack_link"] in sms.body and f"ACK {context['ack_code']}" in sms.body
    assert context["patient_label"] not in sms.body and "186" not in sms.body
    email = lib.render("escalation", "email", "en", context)
    assert context["patient_label"] in email.body and context["rule_title"] in email.body
    assert email.subject == "[Acme Community Clinic] HIGH alert, escalation level 2: review needed"


@pytest.mark.parametrize("source", [
    "{{ org_name.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ '{0.__class__}'.format(org_name) }}",
    "{{ org_name.__class__ }}",
    "{% set x = [1] %}{{ x.append(2) }}",  # the sandbox is immutable
])
def test_sandbox_escape_attempts_are_refused_with_the_file_named(tmp_path, source) -> None:
    d = custom(tmp_path, {"en/alert_low.sms.j2": source})
    with pytest.raises(TemplateSecurityError) as err:
        TemplateLibrary([d]).render("alert_low", "sms", "en", CTX)
    assert "alert_low.sms.j2" in str(err.value) and "sandbox" in str(err.value)


def test_a_template_using_a_field_its_audience_may_not_see_is_refused(tmp_path) -> None:
    d = custom(
        tmp_path, {"en/alert_low.sms.j2": "Hi {{ patient_name }}, your BP was {{ reading }}. Call {{ contact_phone }}"}
    )
    with pytest.raises(TemplateFieldError) as err:
        TemplateLibrary([d]).render("alert_low", "sms", "en", {**CTX, **PHI})
    message = str(err.value)
    assert "patient_name" in message and "reading" in message and "patient sms" in message
    assert "Maria" not in message and "192" not in message


def test_a_program_can_widen_an_audience_explicitly(tmp_path) -> None:
    d = custom(tmp_path, {"en/escalation.sms.j2": "{{ org_name }} alert: {{ rule_title }}"})
    lib = TemplateLibrary([d], extra_fields={"staff": {"sms": ["rule_title"]}})
    assert (
        lib.render("escalation", "sms", "en", {"org_name": "Acme", "rule_title": "BP high"}).body
        == "Acme alert: BP high"
    )


def test_context_values_must_be_plain(lib) -> None:
    with pytest.raises(TemplateFieldError, match="org_name"):
        lib.render("alert_low", "sms", "en", {"org_name": {"name": "Acme"}, "contact_phone": "1"})


def test_missing_field_is_reported(lib) -> None:
    with pytest.raises(TemplateFieldError, match="contact_phone"):
        lib.render("alert_low", "sms", "en", {"org_name": "Acme"})


def test_sms_over_budget_is_refused(lib) -> None:
    with pytest.raises(TemplateBudgetError) as err:
        lib.render(
            "alert_high",
            "sms",
            "en",
            {
                "org_name": "The Regional Medical Center of the Greater Metropolitan Area, Inc.",
                "contact_phone": "(555) 010-0100 ext. 200",
            },
        )
    assert "alert_high (sms, en)" in str(err.value) and "characters (limit 160)" in str(err.value)


def test_html_is_escaped_and_text_is_not(tmp_path, lib) -> None:
    rendered = lib.render("alert_low", "email", "en", {"org_name": "A&B <Clinic>", "contact_phone": "555"})
    assert "A&amp;B &lt;Clinic&gt;" in rendered.html and "A&B <Clinic>" in rendered.body
    assert rendered.subject == "A message from A&B <Clinic>"


def test_unknown_template_channel_or_locale(lib, tmp_path) -> None:
    with pytest.raises(TemplateNotFound, match="catalog"):
        lib.render("no_such_template", "sms", "en", CTX)
    with pytest.raises(TemplateNotFound, match="channel kind"):
        lib.render("alert_low", "voice", "en", CTX)
    d = custom(tmp_path, {"en/rare.sms.j2": "x"}, catalog="templates:\n  rare: {audience: patient}\n")
    assert TemplateLibrary([d]).render("rare", "sms", "es", CTX).locale == "en"
    with pytest.raises(TemplateNotFound, match="no email template 'rare'"):
        TemplateLibrary([d]).render("rare", "email", "en", CTX)


def test_syntax_error_names_file_and_line(tmp_path) -> None:
    d = custom(tmp_path, {"en/alert_low.sms.j2": "{{ org_name }}\n{% if %}"})
    with pytest.raises(TemplateError) as err:
        TemplateLibrary([d]).render("alert_low", "sms", "en", CTX)
    assert "alert_low.sms.j2, line 2" in str(err.value)


def test_templates_are_compiled_once(tmp_path) -> None:
    d = custom(tmp_path, {"en/alert_low.sms.j2": "{{ org_name }} v1 {{ contact_phone }}"})
    lib = TemplateLibrary([d])
    assert "v1" in lib.render("alert_low", "sms", "en", CTX).body
    (d / "en" / "alert_low.sms.j2").write_text("{{ org_name }} v2 {{ contact_phone }}")
    assert "v1" in lib.render("alert_low", "sms", "en", CTX).body  # cached: no file access per render
    assert "v2" in TemplateLibrary([d]).render("alert_low", "sms", "en", CTX).body


def test_check_reports_templates_missing_from_the_catalog(tmp_path) -> None:
    d = custom(tmp_path, {"en/mystery.sms.j2": "x"})
    problems = TemplateLibrary([d]).check()
    assert any("mystery" in p and "catalog" in p for p in problems)
