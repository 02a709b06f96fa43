"""The anonymizer's configuration format (``fhirVersion``, ``processingErrors``, ``fhirPathRules``,
``parameters``), checked so that a bad configuration fails with the rule and the problem named.

Two shipped profiles (``profiles/``): ``safe-harbor`` is the anonymizer's own sample configuration, copied
unchanged (MIT, Microsoft; see ``profiles/LICENSE-fhir-anonymizer.txt``); ``research`` keeps LOINC codes,
values and units and shifts each patient's dates by one offset keeping the time of day, which needs two
Vigil extensions of the format: ``"dateShiftScope": "patient"`` and ``"dateShiftKeepTime": true``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from analytics.deid.paths import CompiledPath, PathError, compile_path
from analytics.views.fhirpath import Expression, FhirPathError

PROFILES = ("safe-harbor", "research")
METHODS = {"keep": "keep", "redact": "redact", "dateshift": "dateshift", "cryptohash": "cryptoHash",
           "encrypt": "encrypt", "substitute": "substitute", "perturb": "perturb", "generalize": "generalize"}
SCOPES = ("resource", "file", "folder", "patient")
_PARAMETERS: dict[str, type | tuple[type, ...]] = {
    "dateShiftKey": str, "dateShiftScope": str, "dateShiftFixedOffsetInDays": (int, type(None)),
    "cryptoHashKey": str, "encryptKey": str, "enablePartialAgesForRedact": bool,
    "enablePartialDatesForRedact": bool, "enablePartialZipCodesForRedact": bool,
    "restrictedZipCodeTabulationAreas": list, "customSettings": (dict, type(None)), "dateShiftKeepTime": bool,
}


class ConfigError(ValueError):
    """A de-identification configuration that cannot be applied; the message names the rule and the problem."""


@dataclass
class Rule:
    index: int
    path: str
    method: str
    select: CompiledPath
    settings: dict[str, Any] = field(default_factory=dict)
    cases: list[tuple[Expression, Expression]] = field(default_factory=list)

    def label(self) -> str:
        return f"fhirPathRules[{self.index}] ({self.path!r}, {self.method})"


@dataclass
class Config:
    rules: list[Rule]
    parameters: dict[str, Any]
    processing_errors: str = "raise"
    source: str = ""

    def param(self, name: str, default: Any = None) -> Any:
        value = self.parameters.get(name)
        return default if value is None else value

    @property
    def keys_configured(self) -> bool:
        return bool(self.param("cryptoHashKey")) and bool(self.param("dateShiftKey"))


def _rule(i: int, raw: Any) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError(f"fhirPathRules[{i}]: must be an object with path and method")
    path, method = raw.get("path"), raw.get("method")
    where = f"fhirPathRules[{i}] ({path!r}, {method})"
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ConfigError(f"{where}: unknown method; use one of {', '.join(METHODS.values())}")
    method = METHODS[method.lower()]
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{where}: path must be a non-empty string")
    try:
        select = compile_path(path)
    except PathError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    rule = Rule(i, path, method, select, {k: v for k, v in raw.items() if k not in ("path", "method")})
    s = rule.settings
    if method == "perturb":
        span = s.get("span")
        if not isinstance(span, (int, float)) or isinstance(span, bool) or span < 0:
            raise ConfigError(f"{where}: span must be a number >= 0, got {span!r}")
        if s.get("rangeType", "fixed") not in ("fixed", "proportional"):
            raise ConfigError(f"{where}: rangeType must be fixed or proportional, got {s.get('rangeType')!r}")
        round_to = s.get("roundTo")
        if round_to is not None and (not isinstance(round_to, int) or not 0 <= round_to <= 28):
            raise ConfigError(f"{where}: roundTo must be an integer 0-28, got {round_to!r}")
    elif method == "substitute":
        if "replaceWith" not in s:
            raise ConfigError(f"{where}: substitute needs replaceWith")
    elif method == "generalize":
        cases = s.get("cases")
        if not isinstance(cases, dict) or not cases:
            raise ConfigError(f"{where}: generalize needs cases, an object of FHIRPath condition -> expression")
        if s.get("otherValues", "redact") not in ("redact", "keep"):
            raise ConfigError(f"{where}: otherValues must be redact or keep, got {s.get('otherValues')!r}")
        try:
            rule.cases = [(Expression(c, f"{where} case {c!r}"), Expression(str(o), f"{where} output {o!r}"))
                          for c, o in cases.items()]
        except FhirPathError as exc:
            raise ConfigError(str(exc)) from exc
    return rule


def _parameters(raw: Any, rules: list[Rule]) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("parameters: must be an object")
    for name, value in raw.items():
        if name not in _PARAMETERS:
            raise ConfigError(f"parameters.{name}: unknown parameter; known: {', '.join(sorted(_PARAMETERS))}")
        if not isinstance(value, _PARAMETERS[name]) or (isinstance(value, bool) and _PARAMETERS[name] is int):
            raise ConfigError(f"parameters.{name}: wrong type {type(value).__name__}")
    scope = raw.get("dateShiftScope") or "resource"
    if scope not in SCOPES:
        raise ConfigError(f"parameters.dateShiftScope: {scope!r} is not one of {', '.join(SCOPES)}")
    zips = raw.get("restrictedZipCodeTabulationAreas") or []
    if not all(isinstance(z, str) and len(z) == 3 and z.isdigit() for z in zips):
        raise ConfigError("parameters.restrictedZipCodeTabulationAreas: each entry must be 3 digits")
    key = raw.get("encryptKey") or ""
    if key and len(key.encode()) not in (16, 24, 32):
        raise ConfigError("parameters.encryptKey: must be 16, 24 or 32 bytes (AES-128/192/256)")
    used = [r for r in rules if r.method == "encrypt"]
    if used and not key:
        raise ConfigError(f"{used[0].label()}: encrypt needs parameters.encryptKey (16, 24 or 32 bytes)")
    return dict(raw)


def parse_config(raw: Any, source: str = "") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source or 'configuration'}: must be a JSON object")
    version = raw.get("fhirVersion") or "R4"
    if str(version).upper() != "R4":
        raise ConfigError(f"fhirVersion: only R4 is supported, got {version!r}")
    errors = raw.get("processingErrors", raw.get("processingError", "raise"))
    if errors not in ("raise", "skip", "keep"):
        raise ConfigError(f"processingErrors: must be raise or skip, got {errors!r}")
    rules_raw = raw.get("fhirPathRules")
    if not isinstance(rules_raw, list):
        raise ConfigError("fhirPathRules: must be a list of rules")
    rules = [_rule(i, r) for i, r in enumerate(rules_raw)]
    return Config(rules, _parameters(raw.get("parameters"), rules), errors, source)


def load_config(name_or_path: str | Path) -> Config:
    """A shipped profile by name (``safe-harbor``, ``research``) or a configuration file."""
    if str(name_or_path) in PROFILES:
        text = resources.files("analytics.deid").joinpath(f"profiles/{name_or_path}.json").read_text("utf-8")
        source = str(name_or_path)
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise ConfigError(f"{path}: no such configuration file (or profile: {', '.join(PROFILES)})")
        text, source = path.read_text(encoding="utf-8"), str(path)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc})") from exc
    return parse_config(raw, source)
