"""CMS remote physiologic monitoring billing progress (CY2026 codes; docs/console.md "Billing").

- 99453: set-up and education, once per patient, in the month of the first enrollment (set-up date).
- Device supply, per 30-day period counted from set-up (period k = set-up + 30k .. + 29 days), as
  distinct calendar days with at least one automatic device reading in the patient's time zone
  (`common.patient_time.days_with_readings`): 16-30 days → 99454, 2-15 → 99445, never both. Only
  days while a program enrollment was active count (ending an enrollment stops the count); only
  Observations with a `device` reference count (manual entries do not).
- Treatment management, per calendar month, from minutes staff log (Encounter resources, below):
  10-19 min → 99470; 20 min or more → 99457 plus one 99458 per further full 20 min. Each needs at
  least one real-time interactive communication in the month; without it no code is counted.
A monthly report lists the device periods that end in that month (billable then) and the period in
progress, if it overlaps the month.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from common.clock import Clock, iso, parse_instant
from common.patient_time import days_with_readings, patient_time_zone
from fhirstore.paging import search_all
from fhirstore.port import FhirStore

TIME_LOG_TYPE = "urn:vigil:rpm-treatment-management"
INTERACTIVE_EXT = "urn:vigil:extension:interactive-communication"
PERIOD_DAYS = 30


def device_code(days: int) -> str | None:
    if days >= 16:
        return "99454"
    if days >= 2:
        return "99445"
    return None


def management_codes(minutes: int, interactive: bool) -> list[str]:
    if not interactive or minutes < 10:
        return []
    if minutes < 20:
        return ["99470"]
    return ["99457"] + ["99458"] * ((minutes - 20) // 20)


@dataclass
class DevicePeriod:
    start: date
    end: date
    days: int
    code: str | None
    complete: bool  # the period has ended (as of the report's time)


@dataclass
class PatientBilling:
    patient_id: str
    name: str
    setup: date
    setup_code: str | None
    periods: list[DevicePeriod]
    minutes: int
    interactive: bool
    management: list[str]
    codes: list[str] = field(default_factory=list)

    @property
    def period(self) -> DevicePeriod | None:
        """The period shown: the one that ends in the month if any, else the one in progress."""
        complete = [p for p in self.periods if p.complete]
        return complete[-1] if complete else (self.periods[-1] if self.periods else None)

    def row(self, month: str) -> dict[str, Any]:
        current = self.period
        return {"month": month, "patient": self.patient_id, "setup": self.setup.isoformat(),
                "device_period": f"{current.start}..{current.end}" if current else "",
                "device_days": current.days if current else 0,
                "minutes": self.minutes, "interactive": "yes" if self.interactive else "no",
                "codes": " ".join(self.codes)}


def month_bounds(month: str) -> tuple[date, date]:
    try:
        first = datetime.strptime(month, "%Y-%m").date()
    except ValueError:
        raise ValueError(f"month {month!r}: use YYYY-MM") from None
    nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    return first, nxt - timedelta(days=1)


def _date(text: str | None) -> date | None:
    if not text:
        return None
    return date.fromisoformat(text[:10])


def enrollment_spans(careplans: list[dict[str, Any]]) -> list[tuple[date, date | None]]:
    spans = []
    for plan in careplans:
        status = plan.get("status")
        start = _date((plan.get("period") or {}).get("start"))
        end = _date((plan.get("period") or {}).get("end"))
        if start is None or status in ("draft", "entered-in-error") or (status == "revoked" and end is None):
            continue
        spans.append((start, end))
    return spans


def _enrolled(day: date, spans: list[tuple[date, date | None]]) -> bool:
    return any(s <= day and (e is None or day <= e) for s, e in spans)


def patient_billing(store: FhirStore, patient: dict[str, Any], month: str, now: datetime) -> PatientBilling | None:
    first, last = month_bounds(month)
    ref = f"Patient/{patient['id']}"
    spans = enrollment_spans(search_all(store, "CarePlan", {"subject": ref}))
    if not spans:
        return None
    setup = min(s for s, _ in spans)
    if setup > last:
        return None
    tz = patient_time_zone(patient, "UTC")
    today = now.astimezone(tz).date()
    periods: list[DevicePeriod] = []
    k_first = max(0, (first - setup).days // PERIOD_DAYS - 1)
    k = k_first
    while True:
        p_start = setup + timedelta(days=PERIOD_DAYS * k)
        p_end = p_start + timedelta(days=PERIOD_DAYS - 1)
        if p_start > last:
            break
        ends_in_month = first <= p_end <= last
        in_progress = p_start <= min(today, last) and p_end > today and p_end >= first
        if ends_in_month or in_progress:
            days = [d for d in _reading_days(store, ref, tz, p_start, p_end) if _enrolled(d, spans)]
            periods.append(DevicePeriod(p_start, p_end, len(days), device_code(len(days)), p_end < today))
        k += 1
    minutes, interactive = logged_minutes(store, ref, first, last, tz)
    management = management_codes(minutes, interactive)
    setup_code = "99453" if first <= setup <= last else None
    codes = ([setup_code] if setup_code else []) + [p.code for p in periods if p.code and p.complete] + management
    name = " ".join(
        [*((patient.get("name") or [{}])[0].get("given") or []), (patient.get("name") or [{}])[0].get("family", "")]
    ).strip()
    return PatientBilling(patient["id"], name, setup, setup_code, periods, minutes, interactive, management, codes)


def _reading_days(store: FhirStore, patient_ref: str, tz: Any, first: date, last: date) -> list[date]:
    lo = datetime.combine(first, datetime.min.time(), tz) - timedelta(days=1)
    hi = datetime.combine(last, datetime.min.time(), tz) + timedelta(days=2)
    times = []
    for obs in search_all(store, "Observation", {"subject": patient_ref, "date": [f"ge{iso(lo)}", f"lt{iso(hi)}"]}):
        if not (obs.get("device") or {}).get("reference"):
            continue  # manual entries do not count toward device supply (clinical.md §3.2)
        when = (
            obs.get("effectiveDateTime")
            or (obs.get("effectivePeriod") or {}).get("start")
            or obs.get("effectiveInstant")
        )
        if when:
            times.append(parse_instant(when))
    return days_with_readings(times, tz, first=first, last=last)


def logged_minutes(store: FhirStore, patient_ref: str, first: date, last: date, tz: Any) -> tuple[int, bool]:
    total, interactive = 0, False
    for enc in search_all(store, "Encounter", {"subject": patient_ref}):
        if not any(c.get("system") == TIME_LOG_TYPE for t in enc.get("type") or [] for c in t.get("coding") or []):
            continue
        when = (enc.get("period") or {}).get("start")
        if not when or not first <= parse_instant(when).astimezone(tz).date() <= last:
            continue
        total += int((enc.get("length") or {}).get("value") or 0)
        interactive = interactive or any(e.get("url") == INTERACTIVE_EXT and e.get("valueBoolean")
                                         for e in enc.get("extension") or [])
    return total, interactive


def log_time(store: FhirStore, clock: Clock, *, patient_id: str, actor: str, minutes: int, interactive: bool,
             note: str = "", alert: str | None = None, when: datetime | None = None) -> dict[str, Any]:
    """Staff time on a patient (or an alert): an Encounter of class VR (virtual) with its length."""
    if not 1 <= minutes <= 600:
        raise ValueError("minutes: between 1 and 600")
    start = when or clock.now()
    enc: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR", "display": "virtual"},
        "type": [{"coding": [{"system": TIME_LOG_TYPE, "code": "treatment-management"}]}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "participant": [{"individual": {"reference": actor}}],
        "period": {"start": iso(start), "end": iso(start + timedelta(minutes=minutes))},
        "length": {"value": minutes, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"},
        "extension": [{"url": INTERACTIVE_EXT, "valueBoolean": bool(interactive)}],
    }
    if note.strip():
        enc["reasonCode"] = [{"text": note.strip()[:500]}]
    if alert:
        enc["reasonReference"] = [{"reference": f"DetectedIssue/{alert}"}]
    result = store.create(enc)
    return result.resource or enc


def billing_report(store: FhirStore, month: str, now: datetime | None = None) -> list[PatientBilling]:
    now = now or datetime.now(UTC)
    month_bounds(month)  # a bad month is an error even with no patients
    out = []
    for patient in search_all(store, "Patient", {}):
        row = patient_billing(store, patient, month, now)
        if row is not None:
            out.append(row)
    return sorted(out, key=lambda r: r.patient_id)


CSV_FIELDS = ["month", "patient", "setup", "device_period", "device_days", "minutes", "interactive", "codes"]


def billing_csv(rows: list[PatientBilling], month: str) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(r.row(month))
    return buf.getvalue()
