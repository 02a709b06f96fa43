"""Message templates: Jinja2 in an immutable sandbox, keyed by (template, channel, locale).

Templates come from care managers, so they are treated as untrusted code:
- rendered by `ImmutableSandboxedEnvironment`: no attribute starting with `_`, no Python
  internals, no mutation of what they are given; an attempt fails with `TemplateSecurityError`
  naming the template file;
- each template declares an audience in a catalog (`catalog.yaml`), and each audience and channel
  has an allow-list of context fields. A template that uses any other field is refused when it is
  loaded, and only allowed fields are ever handed to it: a patient SMS template cannot print a
  name, diagnosis or reading because it never receives one (HIPAA minimum necessary, 45 CFR 164.502(b));
- context values must be plain text or numbers, so no object graph can be walked from a template;
- SMS bodies are checked against a segment budget (`notifications.sms_segments`).

Files: `<dir>/<locale>/<template>.sms.j2`, and for email `<template>.email.subject.j2`,
`<template>.email.txt.j2` and (optional) `<template>.email.html.j2` (HTML is autoescaped).
Lookup walks the locale chain (`es-MX` → `es` → `en`) and, for each locale, the custom directories
before the shipped ones: a Spanish patient gets the shipped Spanish text rather than a customized
English one. Each template is compiled once and cached.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateSyntaxError, UndefinedError, meta
from jinja2.exceptions import TemplateNotFound as JinjaTemplateNotFound
from jinja2.sandbox import SecurityError

from notifications.sms_segments import SegmentInfo, SmsBudget, SmsBudgetExceeded, check_budget
from notifications.template_limits import DEFAULT_LIMITS, BoundedSandbox, RenderLimitExceeded, RenderLimits

SHIPPED_DIR = Path(__file__).resolve().parent / "templates"
DEFAULT_LOCALE = "en"
CHANNEL_KINDS = ("sms", "email")
DEFAULT_SMS_BUDGETS: dict[str, SmsBudget] = {
    "patient": SmsBudget(max_segments=3, max_chars=160),
    "staff": SmsBudget(max_segments=3, max_chars=None),
}
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class TemplateError(Exception):
    """A template could not be found, loaded or rendered; the message names which and why."""


class TemplateNotFound(TemplateError):
    pass


class TemplateSecurityError(TemplateError):
    """The template tried to reach outside the sandbox (Python internals, unsafe attributes)."""


class TemplateFieldError(TemplateError):
    """The template uses a field its audience may not see, or the context lacks a field it needs."""


class TemplateBudgetError(TemplateError):
    """The rendered SMS is over the segment/character budget."""


class TemplateLimitError(TemplateError):
    """Rendering went over a time, size or iteration bound (`notifications.template_limits`)."""


def normalize_locale(locale: str | None) -> str:
    if not locale:
        return DEFAULT_LOCALE
    text = locale.strip().replace("_", "-")
    if not _LOCALE.match(text):
        raise TemplateError(f"{locale!r} is not a locale tag like 'en' or 'es-MX'")
    parts = text.split("-")
    return "-".join([parts[0].lower(), *(p.upper() if len(p) == 2 else p for p in parts[1:])])


def locale_chain(locale: str | None, default: str = DEFAULT_LOCALE) -> list[str]:
    """`es-MX` → [`es-MX`, `es`, `en`]: the tag, its shorter prefixes, then the default."""
    tag = normalize_locale(locale)
    parts = tag.split("-")
    chain = ["-".join(parts[:i]) for i in range(len(parts), 0, -1)]
    if default not in chain:
        chain.append(default)
    return chain


@dataclass(frozen=True)
class Rendered:
    template: str
    channel: str
    locale: str  # the locale whose file was used (after fallback)
    body: str
    subject: str | None = None
    html: str | None = None
    segments: SegmentInfo | None = None


@dataclass(frozen=True)
class Catalog:
    """Which fields each audience may see per channel, and which audience each template has."""

    fields: dict[str, dict[str, frozenset[str]]]  # audience -> channel -> allowed fields
    templates: dict[str, str]  # template -> audience
    samples: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, paths: Iterable[Path]) -> Catalog:
        fields: dict[str, dict[str, frozenset[str]]] = {}
        templates: dict[str, str] = {}
        samples: dict[str, Any] = {}
        for path in paths:
            if not path.exists():
                continue
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise TemplateError(f"{path}: not valid YAML: {exc}") from None
            if not isinstance(data, dict):
                raise TemplateError(f"{path}: expected a mapping with 'audiences' and 'templates'")
            for audience, channels in (data.get("audiences") or {}).items():
                if not isinstance(channels, dict):
                    raise TemplateError(f"{path}: audiences.{audience}: expected channel: [fields]")
                merged = dict(fields.get(audience, {}))
                for channel, names in channels.items():
                    if channel not in CHANNEL_KINDS:
                        raise TemplateError(f"{path}: audiences.{audience}.{channel}: channel must be sms or email")
                    merged[channel] = frozenset(names or ()) | merged.get(channel, frozenset())
                fields[audience] = merged
            for name, spec in (data.get("templates") or {}).items():
                if not _NAME.match(str(name)):
                    raise TemplateError(f"{path}: templates.{name}: names are lower_snake_case")
                audience = (spec or {}).get("audience")
                if not audience:
                    raise TemplateError(f"{path}: templates.{name}: 'audience' is required")
                templates[str(name)] = str(audience)
            samples.update(data.get("samples") or {})
        for name, audience in templates.items():
            if audience not in fields:
                raise TemplateError(f"template {name!r}: audience {audience!r} is not defined under 'audiences'")
        return cls(fields, templates, samples)

    def allowed(self, template: str, channel: str) -> frozenset[str]:
        audience = self.templates.get(template)
        if audience is None:
            raise TemplateNotFound(f"template {template!r} is not in the template catalog (catalog.yaml)")
        return self.fields[audience].get(channel, frozenset())


class TemplateLibrary:
    """Render templates by (name, channel kind, locale). Thread-safe; compile once, cache forever."""

    def __init__(
        self,
        directories: Sequence[str | Path] = (),
        *,
        include_shipped: bool = True,
        sms_budget: SmsBudget | Mapping[str, SmsBudget] | None = None,
        extra_fields: Mapping[str, Mapping[str, Iterable[str]]] | None = None,
        default_locale: str = DEFAULT_LOCALE,
        limits: RenderLimits = DEFAULT_LIMITS,
    ) -> None:
        dirs = [Path(d) for d in directories]
        self._shipped_only: Callable[[], TemplateLibrary] = partial(
            TemplateLibrary, sms_budget=sms_budget, extra_fields=extra_fields, default_locale=default_locale,
            limits=limits)
        self._shipped: TemplateLibrary | None = None
        self.customized = bool(dirs)
        if include_shipped:
            dirs.append(SHIPPED_DIR)
        for d in dirs:
            if not d.is_dir():
                raise TemplateError(f"template directory {d} does not exist")
        self.directories = dirs
        # Shipped catalog first, custom catalogs after: a program may add templates and fields.
        self.catalog = Catalog.load([*(d / "catalog.yaml" for d in reversed(dirs))])
        if extra_fields:
            # "beyond the minimum the program allows" (DESIGN §7): a program can widen an audience.
            for audience, channels in extra_fields.items():
                for channel, names in channels.items():
                    current = self.catalog.fields.setdefault(audience, {})
                    current[channel] = current.get(channel, frozenset()) | frozenset(names)
        # Per audience: patient texts keep the TCPA 160-character limit (FCC 15-72); staff
        # texts carry an acknowledgement link and are bounded by segments only.
        budgets = dict(DEFAULT_SMS_BUDGETS)
        if isinstance(sms_budget, SmsBudget):
            budgets = {audience: sms_budget for audience in budgets}
        elif sms_budget:
            budgets.update(sms_budget)
        self.sms_budgets = budgets
        self.default_locale = normalize_locale(default_locale)
        self._loader = FileSystemLoader([str(d) for d in dirs])
        self.env = BoundedSandbox(
            limits=limits,
            loader=self._loader,
            undefined=StrictUndefined,
            autoescape=lambda name: bool(name and name.endswith(".html.j2")),
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
            cache_size=-1,
        )
        self._resolved: dict[tuple[str, str, str], tuple[str, dict[str, str]]] = {}
        self._compiled: dict[str, tuple[Template, str | None]] = {}
        self._lock = threading.Lock()

    # -- lookup ------------------------------------------------------------------------------
    def _parts(self, channel: str) -> tuple[str, ...]:
        return ("sms",) if channel == "sms" else ("email.subject", "email.txt", "email.html")

    def _find(self, template: str, channel: str, locale: str | None) -> tuple[str, dict[str, str]]:
        """(locale used, {part: loader name}) for the first locale in the chain that has the files."""
        key = (template, channel, locale or "")
        with self._lock:
            hit = self._resolved.get(key)
        if hit is not None:
            return hit
        if channel not in CHANNEL_KINDS:
            raise TemplateNotFound(f"no templates for channel kind {channel!r} (expected sms or email)")
        if not _NAME.match(template):
            raise TemplateNotFound(f"{template!r} is not a template name")
        self.catalog.allowed(template, channel)  # unknown template -> TemplateNotFound
        chain = locale_chain(locale, self.default_locale)
        for loc in chain:
            names = {part: f"{loc}/{template}.{part}.j2" for part in self._parts(channel)}
            required = ["sms"] if channel == "sms" else ["email.subject", "email.txt"]
            if all(self._exists(names[p]) for p in required):
                found = (loc, {p: n for p, n in names.items() if self._exists(n)})
                with self._lock:
                    self._resolved[key] = found
                return found
        raise TemplateNotFound(
            f"no {channel} template {template!r} for locale {locale or self.default_locale!r} "
            f"(looked for {', '.join(chain)} in {', '.join(str(d) for d in self.directories)})"
        )

    def _exists(self, name: str) -> bool:
        return any((d / name).is_file() for d in self.directories)

    def _compile(self, name: str, allowed: frozenset[str], template: str, channel: str) -> tuple[Template, str | None]:
        with self._lock:
            hit = self._compiled.get(name)
        if hit is not None:
            return hit
        try:
            source, filename, _ = self._loader.get_source(self.env, name)
            used = meta.find_undeclared_variables(self.env.parse(source, name, filename))
            compiled = self.env.get_template(name)
        except TemplateSyntaxError as exc:
            raise TemplateError(
                f"{exc.filename or name}, line {exc.lineno}: template syntax error: {exc.message}"
            ) from None
        except JinjaTemplateNotFound:
            raise TemplateNotFound(f"template file {name} disappeared") from None
        except (RecursionError, MemoryError, RenderLimitExceeded, ValueError, ArithmeticError) as exc:
            # Pathological source (nesting thousands deep) or a constant Jinja tried to fold.
            raise TemplateError(f"{name}: could not compile: {type(exc).__name__}: {exc}") from None
        audience = self.catalog.templates[template]
        forbidden = sorted(used - allowed)
        if forbidden:
            raise TemplateFieldError(
                f"{filename}: uses {', '.join(forbidden)}, which {audience} {channel} messages may not carry "
                f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
            )
        with self._lock:
            self._compiled[name] = (compiled, filename)
        return compiled, filename

    # -- rendering ---------------------------------------------------------------------------
    def render(self, template: str, channel: str, locale: str | None, context: Mapping[str, Any]) -> Rendered:
        """Render `template` for a channel kind ("sms" or "email") in the best available locale."""
        used_locale, names = self._find(template, channel, locale)
        allowed = self.catalog.allowed(template, channel)
        values = _safe_context(context, allowed, template)
        out: dict[str, str] = {}
        for part, name in names.items():
            compiled, filename = self._compile(name, allowed, template, channel)
            try:
                out[part] = self.env.render_bounded(compiled, values).strip()
            except SecurityError as exc:
                raise TemplateSecurityError(f"{filename}: refused by the sandbox: {exc}") from None
            except UndefinedError as exc:
                raise TemplateFieldError(f"{filename}: {exc.message}") from None
            except RenderLimitExceeded as exc:
                raise TemplateLimitError(f"{filename}: stopped: {exc}") from None
            except RecursionError:
                raise TemplateLimitError(f"{filename}: stopped: recursion too deep") from None
            except MemoryError:
                raise TemplateLimitError(f"{filename}: stopped: out of memory") from None
            except Exception as exc:  # a template is untrusted code: whatever it raises is its error
                raise TemplateError(f"{filename}: could not render: {type(exc).__name__}: {exc}") from None
        if channel == "sms":
            body = " ".join(out["sms"].split())  # one line: templates may wrap for readability
            budget = self.sms_budgets.get(self.catalog.templates[template], SmsBudget())
            try:
                info = check_budget(body, budget)
            except SmsBudgetExceeded as exc:
                raise TemplateBudgetError(f"{template} (sms, {used_locale}): {exc}") from None
            return Rendered(template, channel, used_locale, body, segments=info)
        subject = " ".join(out["email.subject"].split())
        return Rendered(template, channel, used_locale, out["email.txt"], subject=subject, html=out.get("email.html"))

    def shipped(self) -> TemplateLibrary:
        """The shipped templates alone, with this library's settings: what a staff message falls
        back to when a customized template cannot be rendered."""
        if not self.customized:
            return self
        if self._shipped is None:
            self._shipped = self._shipped_only()
        return self._shipped

    # -- checking ----------------------------------------------------------------------------
    def available(self) -> list[tuple[str, str, str]]:
        """Every (template, channel, locale) with files in some directory."""
        found: set[tuple[str, str, str]] = set()
        for d in self.directories:
            for path in d.glob("*/*.j2"):
                name = path.name[: -len(".j2")]
                template, _, part = name.partition(".")
                channel = "sms" if part == "sms" else "email" if part.startswith("email.") else None
                if channel and template in self.catalog.templates:
                    found.add((template, channel, path.parent.name))
        return sorted(found)

    def check(self, context: Mapping[str, Any] | None = None) -> list[str]:
        """Problems with every template file, rendered with the catalog's sample values (or
        `context`): syntax, fields, sandbox, SMS budget. Empty when all is well."""
        values = {**self.catalog.samples, **(context or {})}
        problems = []
        for d in self.directories:
            for path in sorted(d.glob("*/*.j2")):
                template = path.name.partition(".")[0]
                if template not in self.catalog.templates:
                    problems.append(f"{path}: template {template!r} is not in any catalog.yaml")
        for template, channel, loc in self.available():
            allowed = self.catalog.allowed(template, channel)
            try:
                rendered = self.render(template, channel, loc, {k: v for k, v in values.items() if k in allowed})
                if rendered.locale != loc:
                    problems.append(f"{template} ({channel}, {loc}): incomplete, fell back to {rendered.locale}")
            except TemplateError as exc:
                problems.append(str(exc))
        return problems


_SCALARS = (str, int, float, bool)


def _safe_context(context: Mapping[str, Any], allowed: frozenset[str], template: str) -> dict[str, Any]:
    """Only allowed fields, only plain values: nothing in a template can walk to other data."""
    values: dict[str, Any] = {}
    for key in allowed:
        if key not in context or context[key] is None:
            continue
        value = context[key]
        if not isinstance(value, _SCALARS):
            raise TemplateFieldError(
                f"{template}: field {key!r} must be text or a number, not {type(value).__name__}"
            )
        values[key] = value
    return values
