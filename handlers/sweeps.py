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

from common.clock import Clock
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from handlers.alerting import MessagePolicy, act_on_firing, close
from handlers.patient_data import history_window, load_patient_rules, load_readings, newest_readings
from notifications.channels.base import Channel
from rules.episode_resources import RULE_SYSTEM
from rules.episodes import episode_from_detected_issue, review_open_episode
from rules.evaluate import sweep
from rules.model import Ruleset
from rules.window import History

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    patients: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    closed: int = 0


def run_alert_sweep(store: FhirStore, rulesets: list[Ruleset], channels: dict[str, Channel], clock: Clock,
                    policy: MessagePolicy) -> SweepReport:
    now = clock.now()
    report = SweepReport()
    patients = sorted({(cp.get("subject") or {}).get("reference", "")
                       for cp in search_all(store, "CarePlan", {"status": "active", "_count": "1000"})})
    for patient_ref in (p for p in patients if p.startswith("Patient/")):
        enrolled = load_patient_rules(store, patient_ref, rulesets, now)
        if enrolled is None:
            continue
        report.patients += 1
        metrics, since = history_window(enrolled.rulesets, now)
        absence_metrics = {m for rs in enrolled.rulesets for r in rs.rules if r.has_absence for m in r.metrics}
        readings = load_readings(store, patient_ref, metrics, since)
        readings += newest_readings(store, patient_ref, absence_metrics)
        history = History(readings)
        for firing in sweep(enrolled.rulesets, history, enrolled.context, now):
            report.decisions[act_on_firing(store, channels, clock, policy, firing, patient_ref).decision.action] += 1
        rules = {rule.id: (rs.ruleset, rule) for rs in enrolled.rulesets for rule in rs.rules}
        for issue in search_all(store, "DetectedIssue", {"patient": patient_ref, "status": "preliminary"}):
            codes = [c.get("code") for c in issue.get("code", {}).get("coding", []) if c.get("system") == RULE_SYSTEM]
            if not codes or codes[0] not in rules:
                continue
            ruleset_id, rule = rules[codes[0]]
            decision, _ = review_open_episode(ruleset_id, rule, episode_from_detected_issue(issue), history,
                                              enrolled.context, now)
            if decision.action == "close":
                close(store, issue, now, decision.reason)
                report.closed += 1
    return report
