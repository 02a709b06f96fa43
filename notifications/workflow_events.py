"""Vigil's alert lifecycle as outgoing Event Grid events, for other systems' workflows.

Event types (Event Grid schema; `dataVersion` "1.0" for all; a breaking change to a data shape
gets a new dataVersion, never a silent change):

| eventType                   | subject                | data (v1.0)                                                   |
|-----------------------------|------------------------|---------------------------------------------------------------|
| Vigil.Alert.EpisodeOpened   | DetectedIssue/<id>     | detectedIssue, patient, task?, ruleId, severity               |
| Vigil.Alert.Escalated       | DetectedIssue/<id>     | detectedIssue, patient, task, level, roles, exhausted         |
| Vigil.Alert.Acknowledged    | DetectedIssue/<id>     | detectedIssue, patient, task, acknowledgedBy, level, late     |
| Vigil.Alert.Closed          | DetectedIssue/<id>     | detectedIssue, patient, task?, reason                         |
| Vigil.Message.Failed        | Communication/<id>     | communication, patient?, about?, channel, reasonCode          |
| Vigil.Sms.AckLockedOut      | Basic/<id>             | lockout, failures, lockedForSeconds                           |

Data carries resource references and codes only, never names, numbers, readings or free text:
every field is checked against its kind (reference, code, integer, boolean) before publishing, so
a caller cannot slip PHI in by accident. Consumers fetch the resources they are allowed to see.
Event ids are derived from the event's content, so publishing the same lifecycle step twice
(a replay) gives the same id and subscribers can de-duplicate.

Publishers: `EventGridWorkflowPublisher` (azure-eventgrid `EventGridPublisherClient` with the topic
key) at scale; `CallablePublisher` hands each event to a function (the local bus, read by
`vigil events tail`); `MemoryPublisher` for tests.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from common.clock import iso
from notifications.connection import Secret, normalize_endpoint, transport_options

log = logging.getLogger(__name__)

DATA_VERSION = "1.0"
EPISODE_OPENED = "Vigil.Alert.EpisodeOpened"
ESCALATED = "Vigil.Alert.Escalated"
ACKNOWLEDGED = "Vigil.Alert.Acknowledged"
CLOSED = "Vigil.Alert.Closed"
MESSAGE_FAILED = "Vigil.Message.Failed"
ACK_LOCKED_OUT = "Vigil.Sms.AckLockedOut"  # a number texted too many wrong ACK codes (notifications.ack_lockout)
_NS = uuid.UUID("0b8f6d7e-31a4-4f0e-9c57-6a1e5d2f7c90")

_REF = re.compile(r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}$")
_CODE = re.compile(r"^[a-z0-9][a-z0-9\-_.]{0,63}$")

# field -> kind; "?" marks optional. The schema of each event type's data at DATA_VERSION.
SCHEMAS: dict[str, dict[str, str]] = {
    EPISODE_OPENED: {"detectedIssue": "ref", "patient": "ref", "task": "ref?", "ruleId": "code", "severity": "code"},
    ESCALATED: {"detectedIssue": "ref", "patient": "ref", "task": "ref", "level": "int", "roles": "codes",
                "exhausted": "bool"},
    ACKNOWLEDGED: {"detectedIssue": "ref", "patient": "ref", "task": "ref", "acknowledgedBy": "ref", "level": "int",
                   "late": "bool"},
    CLOSED: {"detectedIssue": "ref", "patient": "ref", "task": "ref?", "reason": "code"},
    MESSAGE_FAILED: {"communication": "ref", "patient": "ref?", "about": "ref?", "channel": "code",
                     "reasonCode": "code"},
    ACK_LOCKED_OUT: {"lockout": "ref", "failures": "int", "lockedForSeconds": "int"},
}
_SUBJECT_FIELD = {EPISODE_OPENED: "detectedIssue", ESCALATED: "detectedIssue", ACKNOWLEDGED: "detectedIssue",
                  CLOSED: "detectedIssue", MESSAGE_FAILED: "communication",
                  ACK_LOCKED_OUT: "lockout"}


class WorkflowEventError(ValueError):
    """An event whose data does not match its schema (the message names the field)."""


class PublishError(RuntimeError):
    """Publishing failed. `transient`: worth retrying (throttled, 5xx, network)."""

    def __init__(self, message: str, *, transient: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class WorkflowEvent:
    id: str
    event_type: str
    subject: str
    data: dict[str, Any]
    event_time: datetime
    data_version: str = DATA_VERSION

    def as_event_grid(self) -> dict[str, Any]:
        """The Event Grid schema envelope (what is posted, and what `events tail` shows)."""
        return {"id": self.id, "eventType": self.event_type, "subject": self.subject, "data": self.data,
                "eventTime": iso(self.event_time), "dataVersion": self.data_version}


def _check(event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    schema = SCHEMAS.get(event_type)
    if schema is None:
        raise WorkflowEventError(f"unknown workflow event type {event_type!r}")
    unknown = set(data) - set(schema)
    if unknown:
        raise WorkflowEventError(f"{event_type}: unknown data field(s) {', '.join(sorted(unknown))}")
    clean: dict[str, Any] = {}
    for name, kind in schema.items():
        optional = kind.endswith("?")
        kind = kind.rstrip("?")
        value = data.get(name)
        if value is None:
            if optional:
                continue
            raise WorkflowEventError(f"{event_type}: data field {name!r} is required")
        ok = (
            (kind == "ref" and isinstance(value, str) and bool(_REF.match(value)))
            or (kind == "code" and isinstance(value, str) and bool(_CODE.match(value)))
            or (kind == "int" and isinstance(value, int) and not isinstance(value, bool))
            or (kind == "bool" and isinstance(value, bool))
            or (kind == "codes" and isinstance(value, list | tuple) and all(isinstance(v, str) and _CODE.match(v)
                                                                            for v in value))
        )
        if not ok:
            # The value itself is not quoted: it may be exactly the PHI this check keeps out.
            raise WorkflowEventError(f"{event_type}: data field {name!r} must be a {kind}"
                                     + (" like 'Patient/123'" if kind == "ref" else " (lower-case code)"
                                        if kind in ("code", "codes") else ""))
        clean[name] = list(value) if kind == "codes" else value
    return clean


def make_event(event_type: str, data: Mapping[str, Any], at: datetime, *, discriminator: str = "") -> WorkflowEvent:
    """A validated event; its id is derived from type, subject and `discriminator` (e.g. the level)."""
    clean = _check(event_type, data)
    subject = clean[_SUBJECT_FIELD[event_type]]
    event_id = str(uuid.uuid5(_NS, f"{event_type}|{subject}|{discriminator}"))
    return WorkflowEvent(event_id, event_type, subject, clean, at)


def episode_opened(*, detected_issue: str, patient: str, rule_id: str, severity: str, at: datetime,
                   task: str | None = None) -> WorkflowEvent:
    return make_event(EPISODE_OPENED, {"detectedIssue": detected_issue, "patient": patient, "task": task,
                                       "ruleId": rule_id, "severity": severity}, at)


def escalated(*, detected_issue: str, patient: str, task: str, level: int, roles: Sequence[str], at: datetime,
              exhausted: bool = False, repeat: int = 0) -> WorkflowEvent:
    return make_event(ESCALATED, {"detectedIssue": detected_issue, "patient": patient, "task": task, "level": level,
                                  "roles": list(roles), "exhausted": exhausted}, at,
                      discriminator=f"{level}|{repeat}|{exhausted}")


def acknowledged(*, detected_issue: str, patient: str, task: str, by: str, level: int, at: datetime,
                 late: bool = False) -> WorkflowEvent:
    return make_event(ACKNOWLEDGED, {"detectedIssue": detected_issue, "patient": patient, "task": task,
                                     "acknowledgedBy": by, "level": level, "late": late}, at)


def closed(*, detected_issue: str, patient: str, reason: str, at: datetime, task: str | None = None) -> WorkflowEvent:
    return make_event(CLOSED, {"detectedIssue": detected_issue, "patient": patient, "task": task, "reason": reason}, at)


def message_failed(*, communication: str, channel: str, reason_code: str, at: datetime, patient: str | None = None,
                   about: str | None = None) -> WorkflowEvent:
    return make_event(MESSAGE_FAILED, {"communication": communication, "patient": patient, "about": about,
                                       "channel": channel, "reasonCode": reason_code}, at)


def ack_locked_out(*, lockout: str, failures: int, locked_for_s: int, at: datetime) -> WorkflowEvent:
    """One per lockout (the lockout's start tells them apart); the number stays in the record."""
    return make_event(ACK_LOCKED_OUT, {"lockout": lockout, "failures": failures, "lockedForSeconds": locked_for_s},
                      at, discriminator=iso(at))


class WorkflowPublisher(Protocol):
    def publish(self, events: Sequence[WorkflowEvent]) -> None:
        ...


class MemoryPublisher:
    def __init__(self) -> None:
        self.events: list[WorkflowEvent] = []

    def publish(self, events: Sequence[WorkflowEvent]) -> None:
        self.events.extend(events)


@dataclass
class CallablePublisher:
    """Hands each event's Event Grid JSON to `send(body, event_id)`, e.g.
    `lambda body, eid: bus.publish("vigil-events", body, msg_id=eid)` for the local bus."""

    send: Callable[[bytes, str], Any]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def publish(self, events: Sequence[WorkflowEvent]) -> None:
        with self._lock:
            for event in events:
                self.send(json.dumps(event.as_event_grid(), sort_keys=True).encode(), event.id)


class EventGridWorkflowPublisher:
    """Publishes to an Event Grid topic (`https://<topic>.<region>-1.eventgrid.azure.net/api/events`)
    with its access key (sent as `aeg-sas-key` by the SDK)."""

    def __init__(self, endpoint: str, key: Secret | str, *, connection_verify: bool | str = True,
                 retry_total: int = 2, timeout_s: float = 30.0, allow_insecure_http: bool = False) -> None:
        self.endpoint = normalize_endpoint(endpoint, what="the Event Grid topic endpoint",
                                           allow_insecure_http=allow_insecure_http)
        self.key = key if isinstance(key, Secret) else Secret(key)
        if not self.key:
            raise ValueError("the Event Grid topic key is empty")
        self.connection_verify = connection_verify
        self.retry_total = retry_total
        self.timeout_s = timeout_s
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EventGridWorkflowPublisher(endpoint={self.endpoint!r})"

    def _eg_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from azure.core.credentials import AzureKeyCredential
                from azure.eventgrid import EventGridPublisherClient

                self._client = EventGridPublisherClient(self.endpoint, AzureKeyCredential(self.key.reveal()))
            return self._client

    def publish(self, events: Sequence[WorkflowEvent]) -> None:
        if not events:
            return
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )
        from azure.eventgrid import EventGridEvent

        from common.retry_after import retry_after_s
        from notifications.provider_replies import scrub

        batch = [
            EventGridEvent(subject=e.subject, event_type=e.event_type, data=e.data, data_version=e.data_version,
                           id=e.id, event_time=e.event_time)
            for e in events
        ]
        try:
            # Transport and retry options go with each call: for a Basic topic this client does not
            # pass constructor options on to the pipeline it builds.
            self._eg_client().send(batch, **transport_options(connection_verify=self.connection_verify,
                                                             retry_total=self.retry_total, timeout_s=self.timeout_s))
        except (ServiceRequestError, ServiceResponseError) as exc:
            # Safe to retry: the event ids are stable, subscribers de-duplicate on them.
            raise PublishError(f"could not reach Event Grid ({type(exc).__name__})", transient=True) from None
        except ClientAuthenticationError as exc:
            raise PublishError(f"Event Grid refused the topic key (HTTP {exc.status_code})", transient=False) from None
        except HttpResponseError as exc:
            status = exc.status_code or 0
            transient = status == 429 or status >= 500
            headers = getattr(exc.response, "headers", None)
            raise PublishError(f"Event Grid answered HTTP {status}: {scrub(exc.message, 200)}", transient=transient,
                               retry_after_s=retry_after_s(headers) if transient else None) from None
        log.info("published %d workflow event(s)", len(batch))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
