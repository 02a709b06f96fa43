"""Template rendering is bounded: each attack stops quickly with an error naming the file.

A care manager's template is untrusted code (docs/notifications.md "Template limits"): loops,
string and integer bombs, recursion and huge outputs must end in a `TemplateError` within a
second, never hang a worker, fill its memory or escape as a raw Python error.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from notifications.template_limits import RenderLimits
from notifications.templates import TemplateError, TemplateLibrary, TemplateLimitError

CTX = {"org_name": "Acme Clinic", "contact_phone": "555-0100"}
# Email body: no SMS budget in the way, so only the render limits stop an attack.
EMAIL = "alert_low.email.txt.j2"

ATTACKS = {
    "nested ranges": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops over a string": "{% set s = 'x' * 60000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "string repetition": "{{ 'x' * 10**9 }}",
    "repetition of a constant": "{{ 'x' * 1000000000 }}",
    "list repetition": "{{ [1] * 10**9 }}",
    "huge power": "{{ 9 ** 99999999 }}",
    "integer too long to print": "{{ 10**5000 }}",
    "integer product": "{% set n = 10**1000 %}{{ n * n * n * n * n * n }}",
    "doubling by concatenation": "{% set ns = namespace(s='x') %}{% for i in range(60) %}"
                                 "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "doubling by +": "{% set ns = namespace(s='x') %}{% for i in range(60) %}"
                     "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "center filter": "{{ 'x' | center(1000000000) }}",
    "center method": "{{ 'x'.center(10**9) }}",
    "format filter width": "{{ '%1000000000s' | format('x') }}",
    "percent width": "{{ '%0*d' % (1000000000, 1) }}",
    "str.format width": "{{ '{:>999999999}'.format('x') }}",
    "replace bomb": "{{ ('x' * 60000) | replace('x', 'x' * 60000) }}",
    "join of a big list": "{{ range(10000) | map('string') | join('y' * 60000) }}",
    "macro recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "recursive loop": "{% for c in 'ab' recursive %}{{ loop('ab') }}{% endfor %}",
    "output flood": "{% for i in range(10000) %}{{ 'y' * 60000 }}{% endfor %}",
    "deep nesting in the source": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "lipsum": "{{ lipsum(100000) }}",
}


def library(tmp_path: Path, source: str, **kwargs) -> TemplateLibrary:
    path = tmp_path / "en" / EMAIL
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    return TemplateLibrary([tmp_path], **kwargs)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_each_attack_stops_within_a_second_with_an_error_naming_the_file(tmp_path, attack: str) -> None:
    lib = library(tmp_path, ATTACKS[attack])
    started = time.monotonic()
    with pytest.raises(TemplateError) as raised:
        lib.render("alert_low", "email", "en", CTX)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"{attack}: took {elapsed:.2f} s"
    assert f"en/{EMAIL}" in str(raised.value)  # which file, so a care manager can fix it


def test_the_limits_name_what_was_exceeded(tmp_path) -> None:
    with pytest.raises(TemplateLimitError, match="a range of more than 10000 items"):
        library(tmp_path / "a0", ATTACKS["nested ranges"]).render("alert_low", "email", "en", CTX)
    with pytest.raises(TemplateLimitError, match="loop iterations"):
        library(tmp_path / "a", ATTACKS["nested ranges"].replace("100000", "10000")).render(
            "alert_low", "email", "en", CTX
        )
    with pytest.raises(TemplateLimitError, match="repetition longer than 65536"):
        library(tmp_path / "b", ATTACKS["string repetition"]).render("alert_low", "email", "en", CTX)
    with pytest.raises(TemplateLimitError, match="output longer than 65536 characters"):
        library(tmp_path / "c", ATTACKS["output flood"]).render("alert_low", "email", "en", CTX)
    with pytest.raises(TemplateLimitError, match="recursion too deep|loop iterations|longer than"):
        library(tmp_path / "d", ATTACKS["macro recursion"]).render("alert_low", "email", "en", CTX)


def test_the_time_budget_stops_work_the_other_limits_allow(tmp_path) -> None:
    # Within the iteration and size limits, but each iteration is slow: only the clock stops it.
    slow = "{% for i in range(10000) %}{{ ('x' * 60000) | replace('x', 'y') | length }}{% endfor %}"
    lib = library(tmp_path, slow, limits=RenderLimits(time_s=0.05))
    started = time.monotonic()
    with pytest.raises(TemplateLimitError, match="longer than 0.05 s"):
        lib.render("alert_low", "email", "en", CTX)
    assert time.monotonic() - started < 1.0


def test_ordinary_templates_are_untouched_by_the_limits(tmp_path) -> None:
    source = ("{% for i in range(3) %}{{ i }}{% endfor %} {{ org_name ~ '!' }} {{ '%05d' | format(42) }} "
              "{{ 'a' * 3 }} {{ 2 ** 10 }} {{ '{:>6}'.format('x') }} {{ 'abc' | replace('b', 'B') }} "
              "{{ [1, 2] + [3] }} {{ range(5) | length }} {{ range(5)[2] }} {{ 3 in range(5) }} "
              "{{ range(3) | reverse | join(',') }}")
    body = library(tmp_path, source).render("alert_low", "email", "en", CTX).body
    assert body == "012 Acme Clinic! 00042 aaa 1024      x aBc [1, 2, 3] 5 2 True 2,1,0"
    # The shipped ones too, in every locale (rendered with realistic values by check()).
    assert TemplateLibrary().check() == []


def test_html_concatenation_still_escapes(tmp_path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "alert_low.email.subject.j2").write_text("s")
    (tmp_path / "en" / "alert_low.email.txt.j2").write_text("t")
    (tmp_path / "en" / "alert_low.email.html.j2").write_text("<p>{{ org_name ~ '<b>' }}</p>")
    rendered = TemplateLibrary([tmp_path]).render("alert_low", "email", "en", {**CTX, "org_name": "A&B"})
    assert rendered.html == "<p>A&amp;B&lt;b&gt;</p>"


def test_the_shipped_library_is_what_a_customized_one_falls_back_to(tmp_path) -> None:
    lib = library(tmp_path, ATTACKS["string repetition"])
    shipped = lib.shipped()
    assert shipped is not lib and shipped.shipped() is shipped
    assert "Acme Clinic has a message for you" in shipped.render("alert_low", "email", "en", CTX).body
