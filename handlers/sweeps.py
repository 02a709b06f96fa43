"""The alert sweep (a timer): absence of data, and closing episodes whose rule stopped holding.

Absence is a timer concern, not an event concern: no event arrives for a reading that never came.
For every patient enrolled by an active CarePlan the sweep evaluates the absence rules at `now`
(in the patient's time zone where calendar days matter) and re-judges each open episode. One
episode per gap: the gap's start anchors the episode key, so the next sweep finds it again.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from fhirstore.paging import search_all
from handlers.alerting import act_on_firing, close
from handlers.messaging import Messaging, escalation_chain_of, notify_patient, run_escalation_step
from handlers.patient_data import history_window, load_patient_rules, load_readings, newest_readings
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
    enrolled = load_patient_rules(store, patient_ref, rulesets, now)
    if enrolled is None:
        return
    report.patients += 1
    metrics, since = history_window(enrolled.rulesets, now)
    absence_metrics = {metric for rs in enrolled.rulesets for r in rs.rules if r.has_absence for metric in r.metrics}
    readings = load_readings(store, patient_ref, metrics, since)
    readings += newest_readings(store, patient_ref, absence_metrics)
    history = History(readings)
    for firing in sweep(enrolled.rulesets, history, enrolled.context, now):
        report.decisions[act_on_firing(m, firing, patient_ref).decision.action] += 1
    rules = {rule.id: (rs.ruleset, rule) for rs in enrolled.rulesets for rule in rs.rules}
    for issue in search_all(store, "DetectedIssue", {"patient": patient_ref, "status": "preliminary"}):
        codes = [c.get("code") for c in issue.get("code", {}).get("coding", []) if c.get("system") == RULE_SYSTEM]
        if not codes or codes[0] not in rules:
            continue
        ruleset_id, rule = rules[codes[0]]
        decision, _ = review_open_episode(ruleset_id, rule, episode_from_detected_issue(issue), history,
                                          enrolled.context, now)
        if decision.action == "close":
            close(m, issue, now, decision.reason)
            report.closed += 1
        elif "patient" in rule.actions.notify:
            # A patient message held back by quiet hours goes out once they end (same key: once).
            notify_patient(m, episode_key=issue["identifier"][0]["value"], patient_ref=patient_ref,
                           severity=issue.get("severity", "moderate"), phase="open")


@dataclass
class EscalationReport:
    failed: int = 0
    open_tasks: int = 0
    messages_sent: int = 0


def run_escalation_sweep(m: Messaging) -> EscalationReport:
    """Advance every open escalation whose wait is over (nothing lives in memory: the Task holds it)."""
    report = EscalationReport()
    for task in search_all(m.store, "Task", {"status": "requested", "_count": "1000"}):
        chain = escalation_chain_of(m, task)
        if chain is None:
            continue
        report.open_tasks += 1
        try:
            report.messages_sent += run_escalation_step(m, task, chain)
        except Exception as exc:  # one Task's failure must not stop the others' escalation
            report.failed += 1
            log.warning("escalation step failed for Task/%s: %s", task.get("id"), type(exc).__name__)
    return report
