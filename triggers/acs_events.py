"""Event Grid trigger: Azure Communication Services events (inbound SMS, delivery reports).

Subscribe the Communication Services resource's `SMSReceived`, `SMSDeliveryReportReceived` and
`EmailDeliveryReportReceived` events to this function (docs/notifications.md). Locally the host
feeds it from the bus queue `eg:on_acs_event`. What each event means lives in
`handlers.acs_events`; this module only unwraps the binding and wires `ACK <code>` texts to
`handlers.acknowledge` (the same acknowledgement as the link, locally and on Azure).
"""

from __future__ import annotations

import azure.functions as func

from handlers.acknowledge import acknowledge_by_code
from handlers.acs_events import AcsEventDeps, handle_acs_event
from notifications.ack_lockout import AckSenderLimit
from runtime.bootstrap import Services, current
from triggers.fhir_events import event_payload, messaging

bp = func.Blueprint()


@bp.function_name("on_acs_event")
@bp.event_grid_trigger(arg_name="event")
def on_acs_event(event: func.EventGridEvent) -> None:
    handle_acs_event(event_payload(event), acs_deps(current()))


def acs_deps(services: Services) -> AcsEventDeps:
    settings = services.settings
    sms_channel = "sms"
    alerts = messaging(services)  # the same store, tokens and workflow events as the link path
    return AcsEventDeps(
        store=services.store,
        channels=services.channels,
        clock=services.clock,
        consent=services.consent,
        templates=services.messages,
        workflow=services.workflow,
        dead_letters=services.dead_letters,
        org_name=settings.org_name,
        # Without a configured help line the HELP answer still says whom to call.
        contact_phone=settings.contact_phone or settings.program_contact,
        ack_replies=lambda reply: acknowledge_by_code(alerts, reply.code, reply.sender),
        sms_channel=sms_channel,
        # The SMS channel's send ledger (ACS SMS has one): a "Delivered" report settles an in-doubt send.
        ledger=getattr(services.channels.get(sms_channel), "ledger", None),
        # In the FHIR store, so every instance sees the same failures and lockouts.
        ack_limit=AckSenderLimit(services.store, services.clock, settings.ack_sms_limits),
    )
