"""Event Grid trigger: Azure Communication Services events (inbound SMS, delivery reports).

Subscribe the Communication Services resource's `SMSReceived`, `SMSDeliveryReportReceived` and
`EmailDeliveryReportReceived` events to this function (docs/notifications.md). Locally the host
feeds it from the bus queue `eg:on_acs_event`. What each event means lives in
`handlers.acs_events`; this module only unwraps the binding. `runtime.bootstrap.acs_deps` wires
`ACK <code>` texts to `handlers.acknowledge` (the same acknowledgement as the link).
"""

from __future__ import annotations

import azure.functions as func

from handlers.acs_events import handle_acs_event
from runtime.bootstrap import acs_deps, current
from triggers.fhir_events import event_payload

bp = func.Blueprint()


@bp.function_name("on_acs_event")
@bp.event_grid_trigger(arg_name="event")
def on_acs_event(event: func.EventGridEvent) -> None:
    handle_acs_event(event_payload(event), acs_deps(current()))
