"""What the console's screens show, read from the FHIR store (no HTTP here, so the CLI shares it)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from common.clock import iso, parse_instant
from common.codes import METRIC_BY_LOINC, METRICS
from common.patient_time import days_with_readings, local_day, patient_time_zone, patient_time_zone_name
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from rules.enrollment import careplan_active
from rules.episode_resources import PRIORITY_EXT
from rules.model import SEVERITY_RANK, Ruleset

RULE_SYSTEM = "urn:vigil:rule"
PRIORITY_RANK = {"routine": 0, "urgent": 1, "asap": 2, "stat": 3}
# "<value> <unit> <op> <value> <unit>" in an explanation (rules/explain.py words it this way).
_COMPARISON = re.compile(r"(-?\d[\d.]*(?:/\d[\d.]*)? [^\s(),]+)(?: \([^)]*\))? (>=|<=|>|<|==) "
                         r"(-?\d[\d.]*(?:/\d[\d.]*)? [^\s(),]+)")


def display_name(patient: dict[str, Any] | None) -> str:
    name = ((patient or {}).get("name") or [{}])[0]
    if name.get("text"):
        return str(name["text"])
    return " ".join([*(name.get("given") or []), name.get("family", "")]).strip() or "(no name)"


def rule_programs(rulesets: list[Ruleset]) -> dict[str, str]:
    return {rule.id: rs.program.id for rs in rulesets for rule in rs.rules}


def _rule_id(issue: dict[str, Any]) -> str:
    return next((c.get("code", "") for c in (issue.get("code") or {}).get("coding") or []
                 if c.get("system") == RULE_SYSTEM), "")


def _read(store: FhirStore, rtype: str, rid: str) -> dict[str, Any] | None:
    try:
        return store.read(rtype, rid)
    except (ResourceNotFound, ResourceGone):
        return None


@dataclass
class InboxRow:
    issue_id: str
    task_id: str | None
    patient_id: str
    patient_name: str
    rule_id: str
    title: str
    program: str
    severity: str
    priority: str
    status: str  # open | acknowledged | closed
    owner: str | None
    opened: datetime
    comparison: str
    escalation: str

    @property
    def stat(self) -> bool:
        return self.priority == "stat"


def task_state(task: dict[str, Any] | None) -> str:
    if task is None:
        return "open"
    return {"accepted": "acknowledged", "completed": "resolved", "cancelled": "resolved"}.get(
        task.get("status", ""), "open"
    )


def inbox(store: FhirStore, rulesets: list[Ruleset], *, program: str = "", severity: str = "", status: str = "",
          owner: str = "", include_closed: bool = False) -> list[InboxRow]:
    """Open episodes, most severe (then highest priority) first, then the oldest first."""
    programs = rule_programs(rulesets)
    issues = search_all(store, "DetectedIssue", {} if include_closed else {"status": "preliminary"})
    tasks = {t["id"]: t for t in search_all(store, "Task", {"status": ["requested", "accepted", "in-progress", "ready",
                                                                       "received"]})} if issues else {}
    patients: dict[str, dict[str, Any] | None] = {}
    rows = []
    for issue in issues:
        pref = (issue.get("patient") or {}).get("reference", "")
        pid = pref.partition("/")[2]
        if pid not in patients:
            patients[pid] = _read(store, "Patient", pid)
        task = tasks.get(issue["id"]) or (_read(store, "Task", issue["id"]) if issue["id"] not in tasks else None)
        state = "closed" if issue.get("status") != "preliminary" else task_state(task)
        rule = _rule_id(issue)
        rows.append(InboxRow(
            issue_id=issue["id"], task_id=task["id"] if task else None, patient_id=pid,
            patient_name=display_name(patients[pid]), rule_id=rule,
            title=(issue.get("code") or {}).get("text") or rule, program=programs.get(rule, ""),
            severity=issue.get("severity", "low"), priority=_priority(issue, task),
            status=state, owner=((task or {}).get("owner") or {}).get("reference"),
            opened=parse_instant((issue.get("identifiedPeriod") or {}).get("start") or issue["meta"]["lastUpdated"]),
            comparison=comparison(issue.get("detail", "")),
            escalation=((task or {}).get("businessStatus") or {}).get("text", ""),
        ))
    rows = [r for r in rows if (not program or r.program == program) and (not severity or r.severity == severity)
            and (not status or r.status == status) and (not owner or r.owner == owner)]
    # STAT above all (docs/console.md): a rule may route a moderate or low alert as stat (docs/rules.md §5).
    rows.sort(key=lambda r: (not r.stat, -SEVERITY_RANK.get(r.severity, 0), -PRIORITY_RANK.get(r.priority, 0),
                             r.opened))
    return rows


def inbox_signature(rows: list[InboxRow]) -> str:
    """A short digest of what the inbox shows (which alerts, in which order, in which state and
    hands): the page compares it with /console/inbox.json's to know when to refresh its rows."""
    text = "|".join(f"{r.issue_id}:{r.status}:{r.owner or ''}:{r.escalation}" for r in rows)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _priority(issue: dict[str, Any], task: dict[str, Any] | None) -> str:
    """The alert's routing priority: the higher of its Task's and the one the DetectedIssue carries
    (an alert without a Task carries it only there)."""
    carried = next((e.get("valueCode") for e in issue.get("extension") or []
                    if e.get("url") == PRIORITY_EXT), None)
    found = [p for p in ((task or {}).get("priority"), carried) if p in PRIORITY_RANK]
    return max(found, key=PRIORITY_RANK.__getitem__, default="routine")


def comparison(detail: str) -> str:
    """The value against its threshold, as the explanation states it ("182 mm[Hg] >= 180 mm[Hg]")."""
    found = [f"{a} {op} {b}".replace(">=", "≥").replace("<=", "≤") for a, op, b in _COMPARISON.findall(detail or "")]
    return "; ".join(found[:2])


def observation_values(obs: dict[str, Any]) -> dict[str, float]:
    """metric name -> value (canonical UCUM unit as stored) of one Observation."""
    out: dict[str, float] = {}

    def take(code_concept: dict[str, Any], quantity: dict[str, Any] | None) -> None:
        if not quantity or quantity.get("value") is None:
            return
        for coding in code_concept.get("coding") or []:
            metric = METRIC_BY_LOINC.get(coding.get("code", ""))
            if metric is not None:
                out[metric.alias] = float(quantity["value"])
                return

    take(obs.get("code") or {}, obs.get("valueQuantity"))
    for comp in obs.get("component") or []:
        take(comp.get("code") or {}, comp.get("valueQuantity"))
    return out


def effective(obs: dict[str, Any]) -> datetime | None:
    when = (
        obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start") or obs.get("effectiveInstant")
    )
    return parse_instant(when) if when else None


@dataclass
class AlertDetail:
    issue: dict[str, Any]
    task: dict[str, Any] | None
    patient: dict[str, Any] | None
    readings: list[tuple[datetime, dict[str, float], str]]
    timeline: list[dict[str, str]]
    messages: list[dict[str, str]]


def alert_detail(store: FhirStore, issue_id: str) -> AlertDetail | None:
    issue = _read(store, "DetectedIssue", issue_id)
    if issue is None:
        return None
    task = _read(store, "Task", issue_id)
    patient = _read(store, "Patient", (issue.get("patient") or {}).get("reference", "").partition("/")[2])
    readings = []
    for ref in (issue.get("implicated") or [])[:50]:
        rtype, _, rid = ref.get("reference", "").partition("/")
        obs = _read(store, rtype, rid) if rtype == "Observation" else None
        if obs is not None and (when := effective(obs)) is not None:
            readings.append((when, observation_values(obs), (obs.get("device") or {}).get("reference", "manual")))
    readings.sort(key=lambda r: r[0], reverse=True)
    timeline = []
    if task is not None:
        seen = None
        for entry in reversed(store.history("Task", issue_id).get("entry", [])):
            v = entry.get("resource") or {}
            state = (
                v.get("status"),
                (v.get("businessStatus") or {}).get("text"),
                (v.get("owner") or {}).get("reference"),
            )
            if state == seen:
                continue
            seen = state
            timeline.append({"at": v.get("lastModified") or v.get("meta", {}).get("lastUpdated", ""),
                             "status": v.get("status", ""), "level": state[1] or "", "owner": state[2] or ""})
    for m in issue.get("mitigation") or []:
        timeline.append({"at": m.get("date", ""), "status": "mitigation",
                         "level": (m.get("action") or {}).get("text", ""),
                         "owner": (m.get("author") or {}).get("reference", "")})
    timeline.sort(key=lambda t: t["at"])
    messages = []
    for c in search_all(store, "Communication", {"subject": (issue.get("patient") or {}).get("reference", "")}):
        if not any(a.get("reference") == f"DetectedIssue/{issue_id}" for a in c.get("about") or []):
            continue
        messages.append(
            {
                "sent": c.get("sent", ""),
                "status": c.get("status", ""),
                "channel": next((x.get("code", "") for m in c.get("medium") or [] for x in m.get("coding") or []), ""),
                "to": ", ".join(r.get("reference", "") for r in c.get("recipient") or []),
                "reason": (c.get("statusReason") or {}).get("text", "")
                or next((x.get("code", "") for x in (c.get("statusReason") or {}).get("coding") or []), ""),
            }
        )
    messages.sort(key=lambda x: x["sent"])
    return AlertDetail(issue, task, patient, readings, timeline, messages)


@dataclass
class GapRow:
    patient_id: str
    patient_name: str
    program: str
    last_reading: datetime | None
    days_since: int | None


def last_reading(store: FhirStore, patient_ref: str) -> datetime | None:
    found = store.search("Observation", {"subject": patient_ref, "_sort": "-date", "_count": "1"})
    return effective(found.resources[0]) if found.resources else None


def data_gaps(store: FhirStore, now: datetime, rulesets: list[Ruleset] | None = None) -> list[GapRow]:
    """Actively enrolled patients by days since their last reading, longest silence first. With
    `rulesets`, per program: the newest reading of a metric that program's rules read (a glucometer
    that went quiet is a diabetes gap even while the BP cuff sends), else of any Observation. Days
    are calendar days in the patient's zone (`common.patient_time`, as billing and adherence count
    them): a reading at 23:30 yesterday is one day ago at 00:30 today."""
    from handlers.patient_data import newest_readings

    metrics_of = {rs.program.id: {m for rule in rs.rules for m in rule.metrics} for rs in rulesets or []}
    rows = []
    last: dict[tuple[str, frozenset[str]], datetime | None] = {}
    patients: dict[str, dict[str, Any] | None] = {}
    for plan in search_all(store, "CarePlan", {"status": "active"}):
        pref = (plan.get("subject") or {}).get("reference", "")
        if pref not in patients:
            patients[pref] = _read(store, "Patient", pref.partition("/")[2])
        tz = patient_time_zone(patients[pref], "UTC")
        if not careplan_active(plan, now, tz):
            continue
        program = next((c.rsplit(":", 1)[-1] for c in plan.get("instantiatesCanonical") or []), plan.get("title", ""))
        metrics = frozenset(metrics_of.get(program) or ())
        if (pref, metrics) not in last:
            if metrics:
                times = [r.effective for r in newest_readings(store, pref, set(metrics))]
                last[(pref, metrics)] = max(times, default=None)
            else:
                last[(pref, metrics)] = last_reading(store, pref)
        when = last[(pref, metrics)]
        rows.append(GapRow(pref.partition("/")[2], display_name(patients[pref]), program, when,
                           (local_day(now, tz) - local_day(when, tz)).days if when else None))
    rows.sort(key=lambda r: (-(r.days_since if r.days_since is not None else 10**6), r.patient_id))
    return rows


def adherence(store: FhirStore, patient: dict[str, Any], now: datetime, days: int) -> tuple[int, int]:
    """(days with readings, days in the window) over the last `days` calendar days in the patient's zone."""
    tz = patient_time_zone(patient, "UTC")
    today = now.astimezone(tz).date()
    first = today - timedelta(days=days - 1)
    times = [t for o in search_all(store, "Observation", {"subject": f"Patient/{patient['id']}",
                                                          "date": f"ge{iso(now - timedelta(days=days + 1))}"})
             if (t := effective(o)) is not None]
    return len(days_with_readings(times, tz, first=first, last=today)), days


def metric_label(metric: str) -> str:
    m = METRICS.get(metric)
    return f"{m.display} ({m.unit_display})" if m else metric


def override_texts(careplan: dict[str, Any]) -> list[str]:
    """The CarePlan's per-patient rule overrides as staff read them ("htn-crisis disabled",
    "htn-weekly-mean-above-goal systolic_goal = 135 mm[Hg]")."""
    from rules.enrollment import OVERRIDE_URL

    out = []
    for ext in careplan.get("extension") or []:
        if ext.get("url") != OVERRIDE_URL:
            continue
        parts = {p.get("url"): p for p in ext.get("extension") or []}
        rule = (parts.get("rule") or {}).get("valueString", "?")
        if (parts.get("disabled") or {}).get("valueBoolean"):
            out.append(f"{rule} disabled")
            continue
        q = (parts.get("value") or {}).get("valueQuantity") or {}
        number = q.get("value")
        shown = f"{number:g}" if isinstance(number, int | float) else "?"
        value = f"{shown} {q.get('code') or q.get('unit') or ''}".strip()
        out.append(f"{rule} {(parts.get('param') or {}).get('valueString', '?')} = {value}")
    return out


def contact_details(patient: dict[str, Any]) -> dict[str, str]:
    """What a nurse needs to reach the patient: phone, email, language, time zone, quiet hours."""
    from notifications.preferences import PREFERENCES_EXT

    telecom = patient.get("telecom") or []
    pick = lambda *systems: next((t.get("value", "") for t in telecom if t.get("system") in systems), "")  # noqa: E731
    language = next((c.get("code", "") for comm in patient.get("communication") or []
                     for c in (comm.get("language") or {}).get("coding") or []), "")
    prefs: dict[str, Any] = next((e for e in patient.get("extension") or [] if e.get("url") == PREFERENCES_EXT), {})
    quiet = next((x.get("valueString", "") for x in prefs.get("extension") or [] if x.get("url") == "quiet-hours"), "")
    return {"phone": pick("sms", "phone"), "email": pick("email"), "language": language,
            "time zone": patient_time_zone_name(patient, ""), "quiet hours": quiet}
