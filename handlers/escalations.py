"""Running an episode's escalation chain: staff are reached through the episode's Task.

The chain notifies level 1 when the episode opens (`start_escalation`, on the Task just written)
and the escalation sweep advances it while nobody acknowledges (`run_escalation_step`, on a Task
the sweep found, read again first). The state machine is `notifications.escalation`; the messages
are composed by `handlers.compose`.

Before the first staff message goes out, the Task gets its acknowledgement code (`ACK <code>` by
SMS; `handlers.acknowledge.acknowledge_by_code`): derived from the Task id with the token key, so
a re-run derives the same code, and written with If-Match before any message quotes it.
"""

from __future__ import annotations

import logging
from typing import Any

from fhirstore.errors import PreconditionFailed, ResourceGone, ResourceNotFound
from handlers.compose import notify_staff
from handlers.messaging import Messaging, focus_of, publish
from notifications.ack_codes import ack_code_from_mac, ack_code_of, with_ack_code
from notifications.dispatch import TransientDeliveryError
from notifications.escalation import advance, chain_of, with_chain
from notifications.escalation_chains import Chain
from notifications.workflow_events import escalated

log = logging.getLogger(__name__)

DEFAULT_CHAINS = {"high": "crisis", "moderate": "standard"}


def start_escalation(m: Messaging, task: dict[str, Any], *, severity: str, chain_id: str | None) -> int:
    """Run the first step of the Task's escalation chain (level 1 is notified at once). `task` is
    the version the caller just read or wrote, so it is not read again."""
    chain = _chain(m, severity, chain_id)
    if chain is None:
        return 0
    return _step(m, task, chain)


def ready_to_escalate(m: Messaging, task: dict[str, Any], *, severity: str, chain_id: str | None) -> dict[str, Any]:
    """A Task about to be written for the first time, carrying what `_prepare_task` would store
    before the first message (its chain and acknowledgement code): written so, the Task is stored
    once instead of written and then updated. The same check `_step` makes decides."""
    chain = _chain(m, severity, chain_id)
    if chain is None:
        return task
    step = advance(task, chain, m.clock.now())
    if step.action in ("wait", "done") or not ((step.roles and ack_code_of(task) is None) or chain_of(task) is None):
        return task
    updated, _ = with_ack_code(task, derive_ack_code(m, task["id"]))
    return with_chain(updated, chain.id)[0]


def _chain(m: Messaging, severity: str, chain_id: str | None) -> Chain | None:
    return m.chains.get(chain_id or DEFAULT_CHAINS.get(severity, ""))


def run_escalation_step(m: Messaging, task: dict[str, Any], chain: Chain) -> int:
    """Advance one Task's chain if due: notify, persist the Task (If-Match), publish the event."""
    # The caller's copy can be minutes old (a sweep works through the due Tasks it found): read it
    # again, so an alert acknowledged meanwhile pages nobody. If-Match on the write below covers
    # the milliseconds left between this read and the send.
    try:
        current = m.store.read("Task", task["id"])
    except (ResourceNotFound, ResourceGone):
        return 0
    return _step(m, current, chain)


def escalation_chain_of(m: Messaging, task: dict[str, Any]) -> Chain | None:
    return m.chains.get(chain_of(task) or "")


def derive_ack_code(m: Messaging, task_id: str) -> str:
    """The Task's acknowledgement code: a MAC over its id with the current token key."""
    return ack_code_from_mac(m.tokens.derive(f"ack-code|Task/{task_id}"))


def _step(m: Messaging, task: dict[str, Any], chain: Chain) -> int:
    step = advance(task, chain, m.clock.now())
    if step.action in ("wait", "done"):
        return 0
    if (step.roles and ack_code_of(task) is None) or chain_of(task) is None:
        recorded = _prepare_task(m, task, chain)
        if recorded is None:
            return 0  # the Task is gone
        if recorded is not task:  # a new version: the step is worked out again from it
            task = recorded
            step = advance(task, chain, m.clock.now())
            if step.action in ("wait", "done"):
                return 0
    try:
        sent = notify_staff(m, task, step) if step.roles else 0
    except TransientDeliveryError:
        # Keep the Task where it was: the next escalation sweep runs this same step again, and
        # the messages that did go out are not resent (same keys).
        log.info("escalation step held back by a transient channel failure")
        return 0
    try:
        m.store.update(step.task, if_match=(task.get("meta") or {}).get("versionId"))
    except PreconditionFailed:
        # Another sweep (or an acknowledgement) changed the Task first; its step wins, and the
        # messages just sent were keyed by this step, so a rerun would not send them again.
        return sent
    if step.action == "notify" and step.level is not None:
        publish(m, escalated(detected_issue=focus_of(task), patient=task["for"]["reference"],
                             task=f"Task/{task['id']}", level=step.level, roles=list(step.roles), at=m.clock.now()))
    return sent


def _prepare_task(m: Messaging, task: dict[str, Any], chain: Chain) -> dict[str, Any] | None:
    """The Task with its chain and acknowledgement code stored before any message goes out
    (If-Match, like every Task write); None if it was deleted. With the chain recorded, a first
    step held back by a channel failure is picked up by the next sweep (the event that opened the
    episode is not retried: the episode is already open). A race re-reads and tries again."""
    for _ in range(3):
        updated, code_added = with_ack_code(task, derive_ack_code(m, task["id"]))
        updated, chain_added = with_chain(updated, chain.id)
        if not (code_added or chain_added):
            return task
        try:
            result = m.store.update(updated, if_match=(task.get("meta") or {}).get("versionId"))
        except PreconditionFailed:
            try:
                task = m.store.read("Task", task["id"])
            except (ResourceNotFound, ResourceGone):
                return None
            continue
        return result.resource if result.resource is not None else m.store.read("Task", task["id"])
    # Three writers in a row beat us: carry on without a stored code (the link still works) and
    # let the next sweep store it; the message just leaves the ACK line out.
    return task
