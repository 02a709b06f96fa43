"""The timer sweeps over alerts: absence of data, closing episodes, and advancing escalations.

Absence is a timer concern, not an event concern: no event arrives for a reading that never came.
For every patient enrolled by an active CarePlan the sweep evaluates the absence rules at `now`
(in the patient's time zone where calendar days matter) and re-judges each open episode. One
episode per gap: the gap's start anchors the episode key, so the next sweep finds it again.

The escalation sweep runs every minute over what may be thousands of open Tasks, almost none of
them due. It asks the store only for the Tasks whose `escalation-due` time has come (and the few
with no due time yet), so "nothing due" costs an index lookup, not a read of every open Task —
where the store says it supports that parameter (fhirstore.capabilities). A server that does not
know it may answer the search with an empty Bundle, which would be a silent "nothing due" forever;
on such a server the sweep reads every open Task instead, and says so once when it starts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from common.clock import iso
from fhirstore.capabilities import ParamSupport, search_param_support
from fhirstore.errors import FhirError
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from handlers.alerting import act_on_firing, close
from handlers.compose import notify_patient
from handlers.escalations import escalation_chain_of, run_escalation_step
from handlers.messaging import OPENING, Messaging
from handlers.patient_data import (
    first_readings_after,
    history_window,
    load_patient_rules,
    load_readings,
    newest_readings,
)
from handlers.patient_file import PatientFile
from notifications.escalation import LEVEL_SYSTEM, chain_of
from rules.episode_resources import RULE_SYSTEM
from rules.episodes import episode_from_detected_issue, review_open_episode
from rules.evaluate import sweep
from rules.model import Ruleset
from rules.window import History

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    failed: int = 0
    patients: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    closed: int = 0


def run_alert_sweep(m: Messaging, rulesets: list[Ruleset]) -> SweepReport:
    store = m.store
    now = m.clock.now()
    report = SweepReport()
    patients = sorted({(cp.get("subject") or {}).get("reference", "")
                       for cp in search_all(store, "CarePlan", {"status": "active", "_count": "1000"})})
    for patient_ref in (p for p in patients if p.startswith("Patient/")):
        try:
            _sweep_patient(m, rulesets, patient_ref, now, report)
        except Exception as exc:  # one patient's failure must not stop the sweep for the others
            report.failed += 1
            log.warning("alert sweep failed for one patient: %s", type(exc).__name__)
    return report


def _sweep_patient(m: Messaging, rulesets: list[Ruleset], patient_ref: str, now: datetime, report: SweepReport) -> None:
    store = m.store
    enrolled = load_patient_rules(store, patient_ref, rulesets, now, default_tz=m.defaults.time_zone)
    if enrolled is None:
        return
    report.patients += 1
    patient = PatientFile(patient_ref, enrolled.patient, m.defaults, now)  # read with the enrollment
    metrics, since = history_window(enrolled.rulesets, now)
    absence_metrics = {metric for rs in enrolled.rulesets for r in rs.rules if r.has_absence for metric in r.metrics}
    readings = load_readings(store, patient_ref, metrics, since)
    readings += newest_readings(store, patient_ref, absence_metrics)
    history = History(readings)
    for firing in sweep(enrolled.rulesets, history, enrolled.context, now):
        report.decisions[act_on_firing(m, firing, patient).decision.action] += 1
    rules = {rule.id: (rs.ruleset, rule) for rs in enrolled.rulesets for rule in rs.rules}
    open_issues = []
    resumed = []
    for issue in search_all(store, "DetectedIssue", {"patient": patient_ref, "status": "preliminary"}):
        codes = [c.get("code") for c in issue.get("code", {}).get("coding", []) if c.get("system") == RULE_SYSTEM]
        if codes and codes[0] in rules:
            ruleset_id, rule = rules[codes[0]]
            episode = episode_from_detected_issue(issue)
            open_issues.append((issue, ruleset_id, rule, episode))
            if rule.has_absence:  # when the gap ended, even if that is older than the window
                resumed += first_readings_after(store, patient_ref, rule.absence_metrics, episode.last_held)
    if resumed:
        history = History([*readings, *resumed])
    for issue, ruleset_id, rule, episode in open_issues:
        decision, _ = review_open_episode(ruleset_id, rule, episode, history, enrolled.context, now)
        if decision.action == "close":
            close(m, issue, now, decision.reason)
            report.closed += 1
        elif "patient" in rule.actions.notify:
            # A patient message held back by quiet hours goes out once they end (same key: once).
            severity = issue.get("severity", "moderate")
            notify_patient(m, patient, episode_key=issue["identifier"][0]["value"], severity=severity,
                           phase=OPENING, urgent=rule.patient_message_now(severity))


@dataclass
class EscalationReport:
    failed: int = 0
    examined: int = 0  # escalation Tasks read and decided (the due ones, not every open Task)
    messages_sent: int = 0


def run_escalation_sweep(m: Messaging) -> EscalationReport:
    """Advance every open escalation whose wait is over (nothing lives in memory: the Task holds it)."""
    report = EscalationReport()
    unknown = 0
    for task in escalation_candidates(m.store, m.clock.now()):
        chain = escalation_chain_of(m, task)
        if chain is None:
            unknown += chain_of(task) is not None
            continue
        report.examined += 1
        try:
            report.messages_sent += run_escalation_step(m, task, chain)
        except Exception as exc:  # one Task's failure must not stop the others' escalation
            report.failed += 1
            log.warning("escalation step failed for Task/%s: %s", task.get("id"), type(exc).__name__)
    if unknown:
        # A chain removed from (or renamed in) the chains file: these alerts would never escalate.
        log.warning("%d open escalation Task(s) name a chain that is not configured; they are not escalating",
                    unknown)
    return report


_OPEN = {"status": "requested", "_count": "1000"}


DUE_PARAM = "escalation-due"
_support: weakref.WeakKeyDictionary[Any, ParamSupport] = weakref.WeakKeyDictionary()
_support_lock = threading.Lock()


def due_search_support(store: FhirStore) -> ParamSupport:
    """Whether `store` supports the Task `escalation-due` search, read from the server once per
    store (a process's lifetime on Azure) and reported once: a warning when it does not, naming
    the fallback. A transient failure of the probe raises, like the sweep's own searches would,
    and the next sweep asks again."""
    with _support_lock:
        try:
            known = _support.get(store)
        except TypeError:  # a store that cannot be weakly referenced: ask every time
            known = None
    if known is not None:
        return known
    support = search_param_support(store, "Task", DUE_PARAM)
    if support.supported:
        log.info("escalation sweep: %s; it reads only the due Tasks", support.detail)
    else:
        log.warning(missing_due_param_message(support))
    with _support_lock, contextlib.suppress(TypeError):
        _support[store] = support
    return support


def missing_due_param_message(support: ParamSupport) -> str:
    """The one line that tells an operator the FHIR server lacks the due-time search, and what then."""
    return (f"the FHIR server does not support Vigil's Task search parameter '{DUE_PARAM}' ({support.detail}): "
            "the escalation sweep reads every open Task each minute instead (correct, slower); register it "
            "as docs/fhir-servers.md describes")


def escalation_candidates(store: FhirStore, now: datetime) -> list[dict[str, Any]]:
    """The open Tasks the escalation sweep may have to act on at `now`, each once: those whose
    `escalation-due` time has come, and those without one that are not exhausted (a chain not
    started yet, or a Task indexed before the store knew the parameter). Waiting Tasks are not
    read. `escalation.advance` still decides each one, so reading a few extra is harmless (a
    server that ignores the parameter returns every open Task: slow, still right); missing a due
    one is not, hence every open Task when the store does not list the parameter (it might answer
    an empty Bundle) or rejects it."""
    if not due_search_support(store).supported:
        return search_all(store, "Task", _OPEN)
    try:
        due = search_all(store, "Task", {**_OPEN, "escalation-due": f"le{iso(now)}"})
        unscheduled = search_all(store, "Task", {**_OPEN, "escalation-due:missing": "true",
                                                 "business-status:not": f"{LEVEL_SYSTEM}|exhausted"})
    except FhirError as exc:
        if exc.status != 400:
            raise
        # A FHIR server without Vigil's `escalation-due` SearchParameter, in strict handling mode.
        log.warning("the FHIR store rejected the escalation-due search; sweeping every open Task")
        return search_all(store, "Task", _OPEN)
    seen: set[str | None] = set()
    out = []
    for task in (*due, *unscheduled):
        if task.get("id") not in seen:
            seen.add(task.get("id"))
            out.append(task)
    return out


def recheck_snoozes(store: FhirStore, now: datetime, deps: Any) -> int:
    """Snoozes whose time is up: the newest reading of their metric goes through the rules again
    (`deps` are the FHIR-event handler's EventDeps)."""
    from handlers.fhir_events import evaluate_observation
    from handlers.snooze import newest_observation, recheck_expired

    return recheck_expired(store, now, lambda obs: evaluate_observation(obs, deps),
                           lambda patient_ref, metric: newest_observation(store, patient_ref, metric))
