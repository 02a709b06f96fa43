"""Azure Communication Services events: inbound SMS (STOP / START / HELP, ACK) and delivery reports.

Event types handled (Event Grid or CloudEvents envelope; everything else is ignored):

| eventType                                            | what Vigil does                                     |
|------------------------------------------------------|-----------------------------------------------------|
| Microsoft.Communication.SMSReceived                  | consent keywords: record the opt-out/opt-in first,  |
|                                                      | then reply once (`consent_stop/_start/_help`);      |
|                                                      | `ACK <code>` acknowledges the alert by SMS          |
|                                                      | (`handlers.acknowledge`), answered once (`ack_*`);  |
|                                                      | wrong codes lock the number out for a while         |
|                                                      | (`notifications.ack_lockout`)                       |
| Microsoft.Communication.SMSDeliveryReportReceived    | the report is recorded on its `Communication`       |
| Microsoft.Communication.EmailDeliveryReportReceived  | same; a failed delivery sends the message's next    |
|                                                      | channel, or records why not                         |
|                                                      | (`notifications.fallback_policy`), then publishes   |
|                                                      | `Vigil.Message.Failed`                              |

Events arrive at least once and out of order. The consent record orders keywords by the time they
were received (`notifications.consent`); replies are keyed by the inbound message id
(`inbound:<messageId>|reply`), so a re-delivered STOP or ACK is answered once. A malformed event is
dead-lettered with a reason that names the field; log lines never carry a phone number or text.

This module routes each event; inbound texts are `handlers.acs_inbound_sms`, delivery reports
`handlers.acs_delivery_reports`, and the envelope, deps and outcome `handlers.acs_event_model`.
"""

from __future__ import annotations

import logging
from typing import Any

from handlers.acs_delivery_reports import delivery_report
from handlers.acs_event_model import (
    HANDLED_TYPES,
    SMS_RECEIVED,
    AckReply,
    AcsEvent,
    AcsEventDeps,
    AcsOutcome,
    InvalidAcsEvent,
    parse_acs_event,
)
from handlers.acs_inbound_sms import sms_received
from ingest.poison import payload_bytes
from notifications.acs_reports import InvalidDeliveryReport

log = logging.getLogger(__name__)


def handle_acs_event(payload: Any, deps: AcsEventDeps) -> AcsOutcome:
    try:
        event = parse_acs_event(payload)
        if event is None:
            return AcsOutcome("ignored")
        if event.event_type == SMS_RECEIVED:
            return sms_received(event, payload, deps)
        return delivery_report(event, deps)
    except (InvalidAcsEvent, InvalidDeliveryReport) as exc:
        _park(deps, payload, "invalid_acs_event", str(exc))
        return AcsOutcome("dead-lettered")


def _park(deps: AcsEventDeps, payload: Any, reason: str, detail: str) -> None:
    body, note = payload_bytes(payload)  # kept even with integers too long for decimal or deep nesting
    deps.dead_letters.add(topic=deps.topic, reason=reason, detail=detail + (f" ({note})" if note else ""),
                          payload=body, source="acs-events")
    log.warning("ACS event dead-lettered: %s", reason)


__all__ = ["HANDLED_TYPES", "SMS_RECEIVED", "AckReply", "AcsEvent", "AcsEventDeps", "AcsOutcome", "InvalidAcsEvent",
           "handle_acs_event", "parse_acs_event"]
