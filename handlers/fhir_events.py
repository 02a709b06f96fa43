"""A FHIR resource changed: evaluate the care-plan rules it may trigger.

Events are at-least-once and unordered, and carry ids only: the handler fetches the version the
event names and acts on that version. Observations are evaluated against the rulesets of the
programs their patient is enrolled in; QuestionnaireResponses are scored into a score Observation,
whose own event then takes the same rule path. Everything downstream is keyed deterministically,
so a re-delivered event opens nothing new and sends nothing again.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.events import EVENT_TYPES, InvalidEvent, parse_event
from fhirstore.port import FhirStore
from handlers.alerting import act_on_firing
from handlers.enrollment_cache import EnrollmentCache
from handlers.messaging import Messaging
from handlers.patient_data import history_window, load_patient_rules, load_readings
from handlers.patient_file import PatientFile
from ingest.deadletter import DeadLetterSink
from ingest.poison import POISON, POISON_AT_STORE, payload_bytes, poison_error
from rules.enrollment import unknown_programs
from rules.evaluate import evaluate
from rules.model import Ruleset
from rules.pro import ScoringError, score_observation, score_response
from rules.readings import ReadingError, readings_from_observation
from rules.window import History

log = logging.getLogger(__name__)


@dataclass
class EventOutcome:
    status: str  # evaluated | scored | not-enrolled | ignored | gone | dead-lettered (bad input, unknown program)
    decisions: Counter[str] = field(default_factory=Counter)  # open / update / suppress ...
    rules_fired: list[str] = field(default_factory=list)
    messages_sent: int = 0


@dataclass(frozen=True)
class EventDeps:
    messaging: Messaging
    rulesets: list[Ruleset]
    dead_letters: DeadLetterSink
    topic: str = "fhir-events"
    enrollments: EnrollmentCache | None = None  # kept by the process across events (triggers.fhir_events)

    @property
    def store(self) -> FhirStore:
        return self.messaging.store


# The resource types whose events this handler acts on (the rest are ignored unread): a relay
# or an Event Grid subscription need deliver only these.
HANDLED_TYPES = frozenset({"Observation", "QuestionnaireResponse", "CarePlan"})

# Events of types Vigil does not handle, by type, in this process: a topic shared with other
# services (DICOM events on a Health Data Services workspace) or Event Grid's own subscription
# validation event. They are well-formed events meant for someone else: counted, not dead-lettered.
IGNORED_EVENT_TYPES: Counter[str] = Counter()


def handle_fhir_event(
    payload: dict[str, Any], deps: EventDeps, *, stored: dict[str, Any] | None = None
) -> EventOutcome:
    """Act on one event. `stored` is the version the event names when the caller has it at hand
    (it just wrote it: handlers.in_process); it is used only if its type, id and version match."""
    event_type = (payload.get("eventType") or payload.get("type")) if isinstance(payload, dict) else None
    if isinstance(event_type, str) and event_type and event_type not in EVENT_TYPES:
        name = event_type[:120]
        IGNORED_EVENT_TYPES[name] += 1
        log.info("ignored an event of type %s (%d of that type so far)", name, IGNORED_EVENT_TYPES[name])
        return EventOutcome("ignored")
    try:
        event = parse_event(payload)
    except InvalidEvent as exc:
        _park(deps, payload, "invalid_event", str(exc))
        return EventOutcome("dead-lettered")
    except POISON as exc:  # a field of a type or size the envelope never has (ingest.poison)
        error = poison_error(exc, "reading the event envelope")
        _park(deps, payload, error.reason, error.detail)
        return EventOutcome("dead-lettered")
    if event.action == "deleted" or event.resource_type not in HANDLED_TYPES:
        return EventOutcome("ignored")
    if stored is not None and _names(stored, event.resource_type, event.resource_id, event.version_id):
        resource = stored
    else:
        try:
            resource = deps.store.vread(event.resource_type, event.resource_id, event.version_id)
        except (ResourceNotFound, ResourceGone):
            return EventOutcome("gone")  # deleted or purged since: nothing left to act on
        except POISON_AT_STORE as exc:  # an id the store cannot even look up (e.g. a lone surrogate)
            error = poison_error(exc, "reading the resource the event names")
            _park(deps, payload, error.reason, error.detail)
            return EventOutcome("dead-lettered")
    if event.resource_type == "CarePlan":
        return check_careplan(resource, deps, payload)
    if event.resource_type == "QuestionnaireResponse":
        return score_questionnaire_response(resource, deps, payload)
    return evaluate_observation(resource, deps, payload)


def _names(resource: dict[str, Any], resource_type: str, resource_id: str, version_id: str) -> bool:
    return (resource.get("resourceType") == resource_type and resource.get("id") == resource_id
            and str((resource.get("meta") or {}).get("versionId")) == version_id)


def evaluate_observation(obs: dict[str, Any], deps: EventDeps, payload: dict[str, Any] | None = None) -> EventOutcome:
    try:
        trigger = readings_from_observation(obs)
    except ReadingError as exc:
        _park(deps, payload or obs, "unreadable_observation", str(exc))
        return EventOutcome("dead-lettered")
    patient_ref = (obs.get("subject") or {}).get("reference", "")
    if not trigger or not patient_ref.startswith("Patient/"):
        return EventOutcome("ignored")
    now = deps.messaging.clock.now()
    patient = load_patient_rules(deps.store, patient_ref, deps.rulesets, now,
                                 default_tz=deps.messaging.defaults.time_zone, cache=deps.enrollments)
    if patient is None:
        return EventOutcome("not-enrolled")
    # The Patient read with the enrollment serves every message this event sends.
    patient_file = PatientFile(patient_ref, patient.patient, deps.messaging.defaults, now)
    metrics, since = history_window(patient.rulesets, trigger[0].effective, frozenset(r.metric for r in trigger))
    history = History(load_readings(deps.store, patient_ref, metrics, since))
    outcome = EventOutcome("evaluated")
    for firing in evaluate(patient.rulesets, trigger, history, patient.context):
        acted = act_on_firing(deps.messaging, firing, patient_file)
        outcome.rules_fired.append(firing.rule_id)
        outcome.decisions[acted.decision.action] += 1
        outcome.messages_sent += acted.messages_sent
    return outcome


def check_careplan(careplan: dict[str, Any], deps: EventDeps, payload: dict[str, Any] | None = None) -> EventOutcome:
    """A CarePlan that names a Vigil program no ruleset defines would enroll its patient in nothing,
    silently: it is dead-lettered (reason `unknown_program`) and logged, so staff fix the program
    id or load the ruleset, then replay it. Enrollment itself is read when readings arrive."""
    if deps.enrollments is not None:
        deps.enrollments.forget((careplan.get("subject") or {}).get("reference"))
    unknown = unknown_programs(careplan, (rs.program for rs in deps.rulesets))
    if not unknown or careplan.get("status") not in ("active", "draft", "on-hold"):
        return EventOutcome("ignored")
    known = sorted({rs.program.id for rs in deps.rulesets})
    detail = (f"CarePlan/{careplan.get('id')} names program(s) {', '.join(repr(u) for u in unknown)} that no loaded "
              f"ruleset defines, so it enrolls its patient in nothing; known programs: {', '.join(known) or 'none'}")
    _park(deps, payload or careplan, "unknown_program", detail)
    # The program id is left out of the log: with a CarePlan id it would say what the patient is treated for.
    log.warning("CarePlan/%s names %d unknown program id(s); dead-lettered as unknown_program",
                careplan.get("id"), len(unknown))
    return EventOutcome("dead-lettered")


def score_questionnaire_response(response: dict[str, Any], deps: EventDeps,
                                 payload: dict[str, Any] | None = None) -> EventOutcome:
    if response.get("status") not in ("completed", "amended"):
        return EventOutcome("ignored")
    questionnaire = _questionnaire(deps.store, response.get("questionnaire"))
    try:
        result = score_response(response, questionnaire)
        observation = score_observation(result, response)
    except ScoringError as exc:
        _park(deps, payload or response, "unscorable_response", str(exc))
        return EventOutcome("dead-lettered")
    # A deterministic id: re-scoring the same response is a no-op; an amended one updates it.
    deps.store.update(observation)
    return EventOutcome("scored")


def _questionnaire(store: FhirStore, canonical: Any) -> dict[str, Any] | None:
    if not isinstance(canonical, str) or not canonical:
        return None
    url, _, version = canonical.partition("|")
    params = {"url": url, **({"version": version} if version else {})}
    try:
        found = store.search("Questionnaire", params)
    except Exception:  # an unsupported search parameter must not stop scoring by answer codes
        log.warning("Questionnaire lookup failed; scoring from answer codes")
        return None
    return found.resources[0] if found.resources else None


def _park(deps: EventDeps, payload: Any, reason: str, detail: str) -> None:
    body, note = payload_bytes(payload)
    deps.dead_letters.add(topic=deps.topic, reason=reason, detail=detail + (f" ({note})" if note else ""),
                          payload=body, source="fhir-events")
