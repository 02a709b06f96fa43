"""Alert episodes: one open alert per rule and patient, and the pure decision for each firing.

An episode starts at its anchor (the first triggering reading's effective time, or the start of an
absence gap) and is identified by a key derived from rule id + patient + anchor, so replays find it
again. Its state lives in the DetectedIssue (`rules.episode_resources`) and is read back with
`episode_from_detected_issue`.

`decide(rule, firing, episode, now)` — `episode` is the patient's most recent episode of this rule
(open or closed), or None:
- open: no episode yet, or the last one closed and its cool-down has passed (or this is worse);
- update: an open episode and a reading not yet counted (count, latest reading, worse severity);
  it notifies again only when the severity got worse or the cool-down since the last
  notification passed;
- suppress: a reading already counted (re-delivered event, Observation update with the same
  outcome), the same absence gap, a reading from before a closed episode ended, or cool-down;
- close: no firing on the latest data, and the rule last held `resolve_after` ago or more
  (call with `firing=None` from `evaluate.latest_outcome`, which re-evaluates the newest reading);
- none: nothing to do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from common.clock import iso, parse_instant
from rules.enrollment import PatientContext
from rules.evaluate import latest_outcome
from rules.model import SEVERITY_RANK, Rule
from rules.quantity import format_duration
from rules.readings import Reading
from rules.results import Firing
from rules.window import History

EPISODE_EXT = "urn:vigil:extension:alert-episode"
MAX_COUNTED = 500  # triggering references remembered per episode, for replay detection

Action = Literal["open", "update", "suppress", "close", "none"]


def episode_key(rule_id: str, patient_ref: str, start: datetime) -> str:
    return hashlib.sha256(f"{rule_id}|{patient_ref}|{iso(start)}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Episode:
    key: str
    rule_id: str
    patient_ref: str
    start: datetime
    is_open: bool
    severity: str
    count: int
    last_held: datetime  # effective time of the latest counted reading (sweep time for absence)
    last_notified: datetime | None
    closed_at: datetime | None
    counted: tuple[str, ...]  # triggering Observation references already counted
    latest_ref: str | None = None
    ruleset: str | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    notify: bool = False
    key: str | None = None
    severity: str | None = None


def decide(rule: Rule, firing: Firing | None, episode: Episode | None, now: datetime,
           patient_ref: str | None = None) -> Decision:
    if firing is None:
        return _without_firing(rule, episode, now)
    patient = patient_ref or (episode.patient_ref if episode else None)
    if patient is None:
        raise ValueError("decide needs the patient reference when there is no episode")
    key = episode_key(rule.id, patient, firing.anchor)
    if episode is None:
        return Decision("open", "first firing of this rule for this patient", True, key, firing.severity)
    worse = SEVERITY_RANK[firing.severity] > SEVERITY_RANK[episode.severity]
    counted = bool(firing.trigger_refs) and set(firing.trigger_refs) <= set(episode.counted)
    if episode.is_open:
        return _in_open(rule, firing, episode, now, worse=worse, counted=counted, same=key == episode.key)
    if key == episode.key:
        return Decision("suppress", "this episode was already opened and closed; the same anchor does not reopen it")
    if counted and not worse:
        return Decision("suppress", "the triggering reading was already counted in the last episode")
    if episode.closed_at and firing.at <= episode.closed_at and not worse:
        return Decision("suppress", "the firing is as of a time before the last episode closed, and not worse")
    cool_until = episode.closed_at + rule.suppression.cooldown if episode.closed_at else None
    if cool_until and now < cool_until and not worse:
        return Decision("suppress", f"cool-down after the last episode until {iso(cool_until)}")
    return Decision("open", "a new episode after the last one closed", True, key, firing.severity)


def _in_open(rule: Rule, firing: Firing, episode: Episode, now: datetime, *, worse: bool, counted: bool,
             same: bool) -> Decision:
    severity = firing.severity if worse else episode.severity
    if worse:
        return Decision("update", f"severity rose to {firing.severity}", True, episode.key, severity)
    if counted:
        return Decision("suppress", "the triggering reading was already counted in the open episode")
    if not firing.trigger:
        why = "the same gap is already alerted" if same else "an absence within an open episode"
        return Decision("suppress", why)
    cooled = episode.last_notified is None or now - episode.last_notified >= rule.suppression.cooldown
    reason = "repeat firing" + ("; cool-down passed, notifying again" if cooled else " within the cool-down")
    return Decision("update", reason, cooled, episode.key, severity)


def _without_firing(rule: Rule, episode: Episode | None, now: datetime) -> Decision:
    if episode is None or not episode.is_open:
        return Decision("none", "the rule does not hold and no episode is open")
    if now - episode.last_held >= rule.suppression.resolve_after:
        return Decision("close", f"the rule has not held for {format_duration(rule.suppression.resolve_after)} "
                        "or more", key=episode.key, severity=episode.severity)
    return Decision("none", "the rule does not hold, but not yet for the resolve-after time")


def review_open_episode(ruleset_id: str, rule: Rule, episode: Episode, history: History | Iterable[Reading],
                        ctx: PatientContext, now: datetime) -> tuple[Decision, Firing | None]:
    """For the timer sweep: re-judge an open episode's rule on the latest data. Gives `close` once
    the newest reading no longer fires and the rule last held `resolve_after` ago or more."""
    history = history if isinstance(history, History) else History(history)
    outcome = latest_outcome(ruleset_id, rule, history, ctx, now)
    if outcome is None and rule.has_absence:
        # An absence holds until the data resumes, not only when a sweep saw it (sweeps that find
        # the same gap write nothing): count resolve_after from the first reading after the last
        # time the episode recorded it holding. `history` must hold that reading, however old
        # (handlers.sweeps loads it with `first_readings_after`).
        resumed = _first_reading_after(history, rule.absence_metrics, episode.last_held)
        if resumed is not None:
            episode = replace(episode, last_held=min(resumed, now))
    return decide(rule, outcome, episode, now, episode.patient_ref), outcome


def _first_reading_after(history: History, metrics: frozenset[str], after: datetime) -> datetime | None:
    times = [r.effective for m in metrics for r in history.series(m).readings if r.effective > after]
    return min(times, default=None)


def apply_decision(decision: Decision, firing: Firing | None, episode: Episode | None, now: datetime,
                   patient_ref: str) -> Episode | None:
    """The episode state after `decision` (what the DetectedIssue builders write), for in-memory
    replays: care-manager test cases and backtests."""
    if decision.action == "open" and firing is not None and decision.key and decision.severity:
        return Episode(decision.key, firing.rule_id, patient_ref, firing.anchor, True, decision.severity, 1,
                       firing.at, now, None, firing.trigger_refs, _latest(firing), firing.ruleset)
    if episode is None:
        return None
    if decision.action == "update" and firing is not None:
        new_refs = tuple(r for r in firing.trigger_refs if r not in episode.counted)
        newer = firing.at >= episode.last_held
        return replace(
            episode,
            severity=decision.severity or episode.severity,
            count=episode.count + (1 if new_refs else 0),
            last_held=max(episode.last_held, firing.at),
            last_notified=now if decision.notify else episode.last_notified,
            counted=(*episode.counted, *new_refs)[-MAX_COUNTED:],
            latest_ref=_latest(firing) if newer else episode.latest_ref,
        )
    if decision.action == "close":
        return replace(episode, is_open=False, closed_at=now)
    return episode


def _latest(firing: Firing) -> str | None:
    return firing.trigger_refs[0] if firing.trigger_refs else None


def episode_from_detected_issue(issue: dict[str, Any]) -> Episode:
    """Read an episode back from the DetectedIssue that `episode_resources` wrote."""
    parts: dict[str, list[Any]] = {}
    for ext in issue.get("extension") or []:
        if ext.get("url") == EPISODE_EXT:
            for part in ext.get("extension") or []:
                value = next((v for k, v in part.items() if k.startswith("value")), None)
                parts.setdefault(part.get("url", ""), []).append(value)
    if not parts:
        raise ValueError("this DetectedIssue was not written by the Vigil rules engine (no episode extension)")
    period = issue.get("identifiedPeriod") or {}
    codes = (issue.get("code") or {}).get("coding") or [{}]

    def one(name: str) -> Any:
        return (parts.get(name) or [None])[0]

    def when(text: Any) -> datetime | None:
        return parse_instant(text) if isinstance(text, str) else None

    return Episode(
        key=issue["identifier"][0]["value"],
        rule_id=codes[0].get("code", ""),
        patient_ref=issue["patient"]["reference"],
        start=parse_instant(period["start"]),
        is_open=issue.get("status") == "preliminary" and not period.get("end"),
        severity=issue.get("severity", "low"),
        count=int(one("count") or 0),
        last_held=when(one("lastHeld")) or parse_instant(period["start"]),
        last_notified=when(one("lastNotified")),
        closed_at=when(period.get("end")),
        counted=tuple(parts.get("counted") or ()),
        latest_ref=(one("latestReading") or {}).get("reference"),
        ruleset=one("ruleset"),
    )
