"""Device mapping templates (MedTech `devicecontent.json`): device message -> measurements.

Supported template types, as in microsoft/iomt-fhir (https://github.com/microsoft/iomt-fhir/tree/main/docs):

* `CollectionContent` — the root; a message is run through **every** child template and every
  match of each becomes one measurement.
* `CalculatedContent` — JSONPath (default) or JMESPath expressions, per expression or via
  `defaultExpressionLanguage`. After `typeMatchExpression` matches, the other expressions see the
  envelope plus `matchedToken`: `{Body, Properties, SystemProperties, matchedToken}`.
* `JsonPathContent` — legacy: every other expression is evaluated against the matched token.
* `IotJsonPathContent` — IoT Hub messages: device id from
  `SystemProperties.iothub-connection-device-id`, time from `Properties.iothub-creation-time-utc`
  (else `SystemProperties.iothub-enqueuedtime`), relative to the matched token.
* `IotCentralJsonPathContent` — IoT Central exports: `deviceId` and `enqueuedTime` of the match.

`ingest.templates.device_loader` reads and compiles a template file; `ingest.templates.device_template`
holds one compiled template and its extraction; this module runs a message through a collection.

Vigil extensions (ignored by MedTech, so a template stays portable):

* value `unit` (a UCUM code or a common spelling) / `unitExpression` (read it from the message):
  the unit the device sends; the FHIR side converts to the Observation's unit.
* template `timestampZone` (an IANA zone name or "UTC") or `timestampZoneExpression` (read the
  zone name from the message, e.g. a user profile's time zone): how to read a timestamp that has
  no UTC offset. Without either such a timestamp is an error (`naive_timestamp`), never silently
  "server local" as in MedTech.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common.jsonnum import loads
from ingest.templates.device_template import DeviceTemplate
from ingest.templates.errors import (
    EXPRESSION_ERROR,
    INVALID_JSON,
    NO_TEMPLATE_MATCHED,
    MappingFailure,
    MessageError,
    TemplateIssue,
)
from ingest.templates.measurement import Measurement
from ingest.templates.message_cache import containers, message_cache


@dataclass
class NormalizeResult:
    """What one device message produced. A message that matched no template has no measurements
    and one `no_template_matched` error: never a silent empty list."""

    measurements: list[Measurement]
    errors: list[MessageError]
    matched_templates: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def reason(self) -> str | None:
        """The dead-letter reason of the first error, or None."""
        return self.errors[0].reason if self.errors else None

    @property
    def detail(self) -> str:
        return "; ".join(e.detail for e in self.errors)


@dataclass
class DeviceTemplateSet:
    """A loaded, compiled device template collection."""

    templates: list[DeviceTemplate]
    name: str = "<templates>"
    issues: list[TemplateIssue] = field(default_factory=list)  # only non-empty with strict=False

    def __post_init__(self) -> None:
        # Anchor members of `$..[?(@a && ...)]` matches, when several templates use that shape.
        anchors = [t.type_match.scan_anchor for t in self.templates if t.type_match.scan_anchor]
        self._anchors = frozenset(anchors) if len(anchors) > 1 else frozenset()

    def _member_index(self, envelope: Any) -> dict[str, list[dict]]:
        index: dict[str, list[dict]] = {}
        anchors = self._anchors
        for node in containers(envelope):
            if type(node) is dict:
                for key in anchors & node.keys():
                    index.setdefault(key, []).append(node)
        return index

    @property
    def type_names(self) -> set[str]:
        return {t.type_name for t in self.templates}

    def normalize(
        self,
        message: dict | list | bytes | str,
        *,
        properties: dict[str, Any] | None = None,
        system_properties: dict[str, Any] | None = None,
        ingested_at: datetime | None = None,
    ) -> NormalizeResult:
        """Run one device message (the event body) through every template.

        `properties`/`system_properties` are the transport's message properties (Event Hubs /
        IoT Hub); they become the envelope's `Properties`/`SystemProperties`.
        """
        if isinstance(message, memoryview):
            message = message.tobytes()
        if isinstance(message, bytes | bytearray | str):
            try:
                body = loads(message)  # numbers as written (common.jsonnum)
            except (ValueError, UnicodeDecodeError) as exc:
                return NormalizeResult(
                    [], [MessageError(INVALID_JSON, f"payload is not valid JSON ({exc.__class__.__name__})")]
                )
        else:
            body = message
        if not isinstance(body, dict | list):
            return NormalizeResult(
                [],
                [MessageError(INVALID_JSON, f"payload is a JSON {type(body).__name__}; expected an object or array")],
            )
        envelope = {"Body": body, "Properties": properties or {}, "SystemProperties": system_properties or {}}
        return self.normalize_envelope(envelope, ingested_at=ingested_at)

    def normalize_envelope(self, envelope: Any, *, ingested_at: datetime | None = None) -> NormalizeResult:
        """Like `normalize`, for a message already wrapped as `{Body, Properties, SystemProperties}`
        (or any root token, as MedTech's own unit tests pass them)."""
        if ingested_at is None:
            ingested_at = datetime.now(UTC)
        measurements: list[Measurement] = []
        errors: list[MessageError] = []
        matched = 0
        with message_cache():
            matched = self._run(envelope, ingested_at, measurements, errors)
        if not measurements and not errors:
            errors.append(
                MessageError(
                    NO_TEMPLATE_MATCHED,
                    f"no typeMatchExpression of the {len(self.templates)} template(s) in {self.name} "
                    "matched the message",
                )
            )
        return NormalizeResult(measurements, errors, matched)

    def _run(self, envelope: Any, ingested_at: datetime, measurements: list[Measurement],
             errors: list[MessageError]) -> int:
        matched = 0
        memo: dict = {}
        index = self._member_index(envelope) if self._anchors else None
        grouped: dict = {}  # X[?key == 'literal'] signature -> the message's elements grouped by key
        for template in self.templates:
            type_match = template.type_match
            anchor = type_match.scan_anchor
            try:
                if type_match.group is not None:
                    signature, literals, _ = type_match.group
                    try:
                        groups = grouped[signature]
                    except KeyError:
                        groups = grouped[signature] = type_match.groups(envelope)
                    if groups is None or literals.isdisjoint(groups):
                        continue
                if index is not None and anchor is not None:
                    # Same result as the expression: the objects passing the filter, in order.
                    candidates = index.get(anchor)
                    if not candidates:
                        continue
                    test = type_match.scan_test
                    assert test is not None  # set together with scan_anchor
                    tokens = [n for n in candidates if test(n, envelope)]
                else:
                    tokens = type_match.find(envelope)
            except MappingFailure as failure:
                failure.where.setdefault("field", "typeMatchExpression")
                errors.append(_with_template(failure, template))
                continue
            except Exception as exc:  # a filter comparison the data does not support
                failed = MappingFailure(EXPRESSION_ERROR, f"typeMatchExpression {type_match.text!r} failed "
                                        f"({type(exc).__name__})", field="typeMatchExpression",
                                        expression=type_match.text)
                errors.append(_with_template(failed, template))
                continue
            if not tokens:
                continue
            matched += 1
            for token in tokens:
                try:
                    measurements.append(template.extract(envelope, token, ingested_at, memo))
                except MappingFailure as failure:
                    errors.append(_with_template(failure, template))
        return matched


def _with_template(failure: MappingFailure, template: DeviceTemplate) -> MessageError:
    detail = f"template[{template.index}] ({template.type_name}): {failure.detail}"
    return MessageError(
        reason=failure.reason,
        detail=detail,
        template_index=template.index,
        type_name=template.type_name,
        field=failure.where.get("field"),
        expression=failure.where.get("expression"),
    )
