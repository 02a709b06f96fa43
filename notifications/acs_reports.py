"""Azure Communication Services delivery reports (Event Grid `data`), parsed into the
provider-neutral `notifications.delivery_reports.DeliveryReport`.

SMS reports carry Vigil's message id as `tag` (`notifications.channels.acs_sms`); email reports
carry the operation id, which is the Communication's provider message id. Event schemas:
https://learn.microsoft.com/azure/event-grid/communication-services-sms-events and
https://learn.microsoft.com/azure/event-grid/communication-services-email-events.
"""

from __future__ import annotations

from typing import Any

from notifications.delivery_reports import DeliveryReport

SMS_DELIVERY_REPORT = "Microsoft.Communication.SMSDeliveryReportReceived"
EMAIL_DELIVERY_REPORT = "Microsoft.Communication.EmailDeliveryReportReceived"
DELIVERY_REPORT_TYPES = frozenset({SMS_DELIVERY_REPORT, EMAIL_DELIVERY_REPORT})
# The report statuses that mean "this message will not arrive" (lower case). SMS: ACS reports
# Delivered or Failed; Expired is the carrier's "not delivered within the validity period" (final).
# Email: the documented values other than Delivered.
SMS_FAILURE_STATUSES = frozenset({"failed", "expired"})
EMAIL_FAILURE_STATUSES = frozenset({"failed", "bounced", "suppressed", "quarantined", "filteredspam"})


class InvalidDeliveryReport(ValueError):
    """A report Vigil cannot act on; the message names the field, never its value."""


def is_permanent_failure(event_type: str, status: str) -> bool:
    """Whether a delivery report status means the message will not arrive (see the sets above)."""
    known = SMS_FAILURE_STATUSES if event_type == SMS_DELIVERY_REPORT else EMAIL_FAILURE_STATUSES
    return status.strip().lower() in known


def parse_acs_delivery_report(event_type: str, data: dict[str, Any]) -> DeliveryReport:
    """The report in an ACS delivery-report event's `data`; InvalidDeliveryReport names what is missing."""
    if event_type == SMS_DELIVERY_REPORT:
        tag = data.get("tag") if isinstance(data.get("tag"), str) and data["tag"] else None
        provider_id = _text(data, "messageId", event_type) if tag is None else _optional(data, "messageId")
        status = _text(data, "deliveryStatus", event_type)
        details = data.get("deliveryStatusDetails")
        return DeliveryReport("sms", status, _delivered(status), is_permanent_failure(event_type, status),
                              message_id=tag, provider_id=provider_id,
                              detail=details if isinstance(details, str) else "",
                              received=_optional(data, "receivedTimestamp"))
    if event_type == EMAIL_DELIVERY_REPORT:
        provider_id = _text(data, "messageId", event_type)
        status = _text(data, "status", event_type)
        details = data.get("deliveryStatusDetails")
        detail = str(details.get("statusMessage") or "") if isinstance(details, dict) else ""
        return DeliveryReport("email", status, _delivered(status), is_permanent_failure(event_type, status),
                              provider_id=provider_id, detail=detail,
                              received=_optional(data, "deliveryAttemptTimeStamp"))
    raise InvalidDeliveryReport(f"not an ACS delivery report: event type {event_type!r}")


def _delivered(status: str) -> bool:
    return status.strip().lower() == "delivered"


def _text(data: dict[str, Any], name: str, event_type: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidDeliveryReport(f"{event_type}: data.{name} is missing or empty")
    return value.strip()


def _optional(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    return str(value) if value not in (None, "") else None
