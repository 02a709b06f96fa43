"""When a provider reports that a message did not arrive, what happens to its next channel
(SMS failed -> email): sent now, recorded not sent (`Withhold`), or left for a sweep.

- An escalation's fallback to a clinician is withheld once the alert is acknowledged or closed
  (`notifications.escalation.is_open`): someone already acted on it. Sent when in doubt.
- A fallback to the patient waits for the end of their quiet hours when the message may not reach
  them before then (`notifications.preferences.send_at`: reminders and non-urgent alerts wait;
  urgent alerts, consent and staff messages do not). If a sweep runs the original request again
  while what it is about stays open (`MessageRequest.sweep_resends`, the opening patient alert of
  an open episode), it is left to that run, which walks the same chain under the same keys;
  otherwise it is withheld, as nothing would send it later.
- Everything else is sent now, through `dispatch.deliver_fallback` (consent, retries and further
  fallbacks are `deliver()`'s as always).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common.clock import Clock
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from notifications.channels.base import Channel
from notifications.dispatch import deliver_fallback
from notifications.escalation import is_open
from notifications.fallback_plan import pending_fallback
from notifications.message_request import DeliveryOutcome, MessageRequest, Withhold
from notifications.preferences import PreferenceDefaults, PreferenceError, patient_recipient, send_at

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FallbackResult:
    """`outcome`: the next channel's outcome (None: nothing to fall back to, or held); `held_until`:
    when the patient's quiet hours end, for a fallback left to the sweep."""

    outcome: DeliveryOutcome | None = None
    held_until: datetime | None = None


def fall_back_after_report(store: FhirStore, channels: dict[str, Channel], comm: dict[str, Any], clock: Clock,
                           defaults: PreferenceDefaults) -> FallbackResult:
    """The next channel of `comm`, a message a provider reported undelivered (see above).
    Idempotent by key: a re-delivered report finds the fallback already decided."""
    nxt = pending_fallback(comm)
    if nxt is None:
        return FallbackResult()
    withhold = _alert_no_longer_open(store, nxt)
    if withhold is None:
        quiet_until = _quiet_hours_until(store, nxt, clock, defaults)
        if quiet_until is not None:
            if _sweep_will_resend(store, nxt):
                log.info("fallback for message %s left to the sweep after the patient's quiet hours", comm.get("id"))
                return FallbackResult(held_until=quiet_until)
            withhold = _quiet_hours(nxt)
    return FallbackResult(deliver_fallback(store, channels, comm, clock, withhold=withhold))


def _quiet_hours_until(store: FhirStore, nxt: MessageRequest, clock: Clock,
                       defaults: PreferenceDefaults) -> datetime | None:
    """When the patient's quiet hours end, if the fallback of a message to the patient may not go out
    before then; None when it may go now."""
    if not nxt.patient_ref or nxt.recipient_ref != nxt.patient_ref:
        return None
    now = clock.now()
    try:
        patient = store.read("Patient", nxt.patient_ref.partition("/")[2])
        when = send_at(patient_recipient(patient, defaults, now=now), category=nxt.category,
                       urgent=nxt.is_urgent, now=now)
    except (ResourceNotFound, ResourceGone, PreferenceError):
        return None  # no preferences to honour: deliver() decides as for any message
    return when if when > now else None


def _sweep_will_resend(store: FhirStore, nxt: MessageRequest) -> bool:
    """Whether the sweep that re-runs `nxt`'s original request will: it re-runs the requests of
    episodes still open (a DetectedIssue still `preliminary`)."""
    kind, _, episode = (nxt.about_ref or "").partition("/")
    if not nxt.sweep_resends or kind != "DetectedIssue":
        return False
    try:
        return store.read("DetectedIssue", episode).get("status") == "preliminary"
    except ResourceNotFound:
        # The episode is still being opened (its DetectedIssue is written last, after the opening
        # message): once it is, the sweep re-runs that message, so leave the fallback to it.
        return True
    except ResourceGone:
        return False


def _quiet_hours(nxt: MessageRequest) -> Withhold:
    # Held by the transport instead, a report would need a retry at 08:00 that neither the local
    # bus (capped waits, 5 attempts) nor Event Grid (24 h schedule) makes; and a reminder is only
    # useful on its day (tomorrow's comes anyway).
    why = ("the reminder is no longer timely" if nxt.category == "reminder"
           else "nothing re-sends it after them")
    return Withhold(f"{nxt.category} fallback not sent: the patient's quiet hours; {why}", "quiet-hours")


def _alert_no_longer_open(store: FhirStore, nxt: MessageRequest) -> Withhold | None:
    if nxt.category != "escalation":
        return None
    kind, _, rid = (nxt.about_ref or "").partition("/")
    try:
        if kind == "Task":
            tasks = [store.read("Task", rid)]
        elif kind == "DetectedIssue":
            tasks = search_all(store, "Task", {"focus": nxt.about_ref or ""})
        else:
            return None
    except ResourceGone:
        tasks = [{}]  # deleted: not open
    except ResourceNotFound:
        return None
    if not tasks or any(is_open(task) for task in tasks):
        return None
    return Withhold("escalation fallback not sent: the alert is no longer open (acknowledged or closed)",
                    "alert-closed")
