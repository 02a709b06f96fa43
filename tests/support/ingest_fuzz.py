"""Fuzzed device-message batches for every shipped preset, and an accounting read from the stores.

Used by the property test (tests/integration/test_ingest_fuzz.py) and by `bench/fuzz.py`.

* `batches(preset)` is a hypothesis strategy: batches of realistic messages of that preset
  (tests/unit/ingest/test_presets.py's payloads), some unchanged, some with a field replaced by an
  arbitrary or hostile value, some repeated with the same timestamp (so one supersedes the other),
  and raw poison bodies (nesting past the parser's limit, a 5,000-digit integer, a lone surrogate,
  a timestamp outside years 1-9999, a megabyte-long time-zone name, broken JSON).
* `World` is a real SQLite FHIR store and dead-letter store in a directory, with the preset's
  devices registered to a patient.
* `account(world, batch)` says, from what the two stores hold, what became of each message:
  dead-lettered (a dead letter holds its exact payload), written (each of its readings maps to an
  Observation in the store that holds the reading's value), superseded (a reading's value is not
  there, but a later message of the batch with a reading of the same device, type and time is, and
  was itself written), or unaccounted.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from common.clock import FixedClock
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.sqlite import SqliteFhirStore
from handlers.ingest import DEAD_LETTERED, SUPERSEDED, WRITTEN, IngestDeps, RawMessage
from ingest.deadletter import SqliteDeadLetterStore
from ingest.identity import IdentityResolver
from ingest.templates import group_measurements
from ingest.templates.presets import list_presets, preset_paths
from ingest.templates.reload import TemplateFiles

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
PATIENT = "fz-patient"
PATIENT_IDENTIFIERS = ("p1", "MRN-4471", "user-oid-1")
# Reasons that name no specific cause: a dead letter under one of these fails the accounting.
UNSPECIFIC_REASONS = frozenset({"", "unprocessable_value", "delivery_failed", "error"})

IOT_HUB_PROPERTIES = {"iothub-creation-time-utc": "2024-05-01T08:00:00.1234567Z", "patientId": "p1"}
IOT_HUB_SYSTEM = {"iothub-connection-device-id": "bedside-monitor-12", "iothub-enqueuedtime": "2024-05-01T08:00:01Z"}


def _hk(**fields: Any) -> dict[str, Any]:
    return {"uuid": "3F2504E0-4F89-11D3-9A0C-0305E82C3301", "startDate": "2024-05-01T08:00:00Z",
            "endDate": "2024-05-01T08:00:00Z", "deviceId": "iphone-1", "patientId": "p1", **fields}


# (body, properties, system properties) per preset: the payloads of tests/unit/ingest/test_presets.py.
SAMPLES: dict[str, list[tuple[Any, dict[str, Any], dict[str, Any]]]] = {
    "vigil-generic": [(m, {}, {}) for m in [
        {"deviceId": "cuff-1", "patientId": "p1", "type": "blood_pressure", "time": "2024-05-01T07:30:00-05:00",
         "values": {"systolic": 142, "diastolic": 91, "pulse": 77}},
        {"deviceId": "scale-1", "patientId": "p1", "type": "body_weight", "time": "2024-05-01T07:31:00-05:00",
         "values": {"weight": 187.4, "unit": "lb"}},
        {"deviceId": "meter-1", "patientId": "p1", "type": "glucose", "time": "2024-05-01T07:32:00-05:00",
         "values": {"glucose": 6.2, "unit": "mmol/L"}},
        {"deviceId": "ox-1", "patientId": "p1", "type": "spo2", "time": "2024-05-01T07:34:00-05:00",
         "values": {"percent": 96}},
        {"deviceId": "hr-1", "patientId": "p1", "type": "heart_rate", "time": "2024-05-01T07:35:00-05:00",
         "values": {"bpm": 64}},
    ]],
    "fitbit": [(m, {}, {}) for m in [
        {"deviceId": "fitbit-user-7QX", "patientId": "p1", "timezone": "America/Chicago", "unitSystem": "en_US",
         "weight": [{"bmi": 27.2, "date": "2024-01-15", "logId": 1705325400000, "source": "Aria",
                     "time": "07:30:00", "weight": 187.4}]},
        {"deviceId": "fitbit-user-7QX", "patientId": "p1", "timezone": "America/Chicago",
         "activities-heart-intraday": {"dataset": [{"time": "08:00:00", "value": 64}, {"time": "08:01:00", "value": 66}],
                                       "datasetInterval": 1, "datasetType": "minute"},
         "activities-heart": [{"dateTime": "2024-01-15", "value": {"restingHeartRate": 61}}]},
        {"deviceId": "fitbit-user-7QX", "patientId": "p1", "timezone": "America/Chicago",
         "activities-steps": [{"dateTime": "2024-01-14", "value": "8231"}]},
    ]],
    "google-fit": [(m, {}, {}) for m in [
        {"patientIdentifier": "user-oid-1", "deviceIdentifier": "user-oid-1.com.google.android.gms.merge",
         "dataSourceId": "derived:com.google.heart_rate.bpm:com.google.android.gms:merge_heart_rate_bpm",
         "point": [{"startTimeNanos": "1714550400000000000", "endTimeNanos": "1714550400000000000",
                    "dataTypeName": "com.google.heart_rate.bpm", "value": [{"fpVal": 72.0, "mapVal": []}]}]},
        {"patientIdentifier": "user-oid-1", "deviceIdentifier": "user-oid-1.com.omron.cuff",
         "dataSourceId": "raw:com.google.blood_pressure:com.omronhealthcare:bp",
         "point": [{"startTimeNanos": "1714550400000000000", "endTimeNanos": "1714550400000000000",
                    "dataTypeName": "com.google.blood_pressure",
                    "value": [{"fpVal": 131.0}, {"fpVal": 84.0}, {"intVal": 1}, {"intVal": 1}]}]},
    ]],
    "healthkit": [(m, {}, {}) for m in [
        _hk(heartRate=72.0, unit="count/min"), _hk(bodyMass=176.0, unit="lb"),
        _hk(oxygenSaturation=0.97, unit="%"), _hk(systolic=121.0, diastolic=79.0, systolicUnit="mmHg",
                                                  diastolicUnit="mmHg"),
    ]],
    "iot-hub": [({"HeartRate": 88, "Systolic": 128, "Diastolic": 82, "SpO2": 97}, IOT_HUB_PROPERTIES, IOT_HUB_SYSTEM)],
    "iot-central": [({"applicationId": "1dffa667", "messageSource": "telemetry", "deviceId": "1qsi9p8t5l2",
                      "schema": "default@v1", "enqueuedTime": "2021-06-08T19:45:20.2020000Z",
                      "telemetry": {"HeartRate": 75, "RespiratoryRate": 15, "BodyTemperature": 98.6,
                                    "BloodPressure": {"Systolic": 118, "Diastolic": 76}},
                      "enrichments": {"patientId": "p1"}, "messageProperties": {}}, {}, {})],
    "life365-hub": [({"hubId": "HUB-00912", "exportedAt": "2024-05-02T13:15:00Z", "patient": {"mrn": "MRN-4471"},
                      "readings": [
                          {"readingId": "r-1", "deviceSerial": "BP7250-1234", "kind": "BP",
                           "takenAt": "2024-05-02T07:58:12-05:00", "sys": 142, "dia": 91, "pulse": 78, "uom": "mmHg"},
                          {"readingId": "r-2", "deviceSerial": "SC-100-77", "kind": "WEIGHT",
                           "takenAt": "2024-05-02T08:01:40-05:00", "value": 187.4, "uom": "lbs"}]}, {}, {})],
}
assert set(SAMPLES) == set(list_presets()), "every shipped preset has fuzz samples"

# --- poison ---------------------------------------------------------------------------------------
POISON_CLASSES = ("deep_nesting", "huge_integer", "lone_surrogate", "timestamp_overflow", "long_time_zone",
                  "surrogate_property", "broken_json")
_BIG = "9" * 5000


def poison(kind: str, preset: str, nonce: int) -> RawMessage:
    """One message of the given poison class, shaped like the preset's first sample."""
    body, props, system = copy.deepcopy(SAMPLES[preset][0])
    body = {**body, "fuzzNonce": nonce} if isinstance(body, dict) else body
    if kind == "deep_nesting":
        raw = json.dumps(body)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
        return RawMessage(raw.encode(), props, system)
    if kind == "huge_integer":
        return RawMessage(json.dumps({**body, "big": "__BIG__"}).replace('"__BIG__"', _BIG).encode(), props, system)
    if kind == "lone_surrogate":
        return RawMessage(json.dumps(_replace_first_string(body, "dev\ud800ice")).encode(), props, system)
    if kind == "timestamp_overflow":
        return RawMessage(json.dumps(_replace_times(body, "9999-12-31T23:59:59-23:59")).encode(), props, system)
    if kind == "long_time_zone":
        zone = "A" * 1_000_000 if nonce % 2 else "Europe/" + "x" * 300
        return RawMessage(json.dumps({**body, "timezone": zone, **_naive(body)}).encode(), props, system)
    if kind == "surrogate_property":
        return RawMessage(json.dumps(body).encode(), {**props, "patientId": "p\udc801"},
                          {**system, "iothub-connection-device-id": "dev\udc80"} if system else system)
    return RawMessage(json.dumps(body).encode()[:-3] + b"{{", props, system)


def _naive(body: dict[str, Any]) -> dict[str, Any]:
    """Time fields without an offset, so the message's time-zone name is looked up."""
    return {k: "2024-05-01T08:00:00" for k in ("time", "startDate", "endDate", "takenAt") if k in body}


def _replace_first_string(value: Any, new: str) -> Any:
    if isinstance(value, dict):
        for key in ("deviceId", "deviceIdentifier", "deviceSerial"):
            if key in value:
                return {**value, key: new}
        return {k: (_replace_first_string(v, new) if isinstance(v, dict | list) else v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_first_string(v, new) for v in value]
    return value


_TIME_KEYS = ("time", "startDate", "endDate", "takenAt", "enqueuedTime", "exportedAt")


def _replace_times(value: Any, new: str) -> Any:
    if isinstance(value, dict):
        return {k: (new if k in _TIME_KEYS else _replace_times(v, new)) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_times(v, new) for v in value]
    return value


# --- strategies -----------------------------------------------------------------------------------
def _leaves(value: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))] or [path]
    return [path]


def _set(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    out = copy.copy(value)
    out[path[0]] = _set(value[path[0]], path[1:], new)
    return out


hostile_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
    st.sampled_from(["", " ", "NaN", "1e999", "-0", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00",
                     "2024-05-01T08:00:00", "2024-02-30T00:00:00Z", "x\ud800", "Etc/GMT+99", "../../etc/passwd",
                     "America/Chicago", "12:00:00", "1714550400000000000", "-1", "0"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@st.composite
def _message(draw: st.DrawFn, preset: str, nonce: int) -> list[RawMessage]:
    """One message (or a message and a same-time repeat of it)."""
    samples = SAMPLES[preset]
    body, props, system = copy.deepcopy(samples[draw(st.integers(0, len(samples) - 1))])
    kind = draw(st.sampled_from(["sample", "mutated", "mutated", "repeat", "repeat_invalid", "poison"]))
    # Another time for most messages: readings at the same time of the same device replace each other.
    body = _shift_times(body, draw(st.sampled_from([0, 0, 1, 7, 59, 61, 600, 1440, 4000])))
    if kind == "poison":
        return [poison(draw(st.sampled_from(POISON_CLASSES)), preset, nonce)]
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 3))):
            leaves = _leaves(body)
            body = _set(body, leaves[draw(st.integers(0, len(leaves) - 1))], draw(hostile_values))
    first = RawMessage(json.dumps({**body, "fuzzNonce": nonce}).encode(), props, system)
    if kind not in ("repeat", "repeat_invalid"):
        return [first]
    # The same reading again (same device, type and time) with another value, valid or not.
    leaves = [p for p in _leaves(body)
              if isinstance(_get(body, p), int | float) and not isinstance(_get(body, p), bool)]
    if leaves:
        path = leaves[draw(st.integers(0, len(leaves) - 1))]
        new = draw(st.sampled_from([9999, -5, 10**6])) if kind == "repeat_invalid" else _get(body, path) + 1
        body = _set(body, path, new)
    return [first, RawMessage(json.dumps({**body, "fuzzNonce": nonce + 1}).encode(), props, system)]


def _shift_times(value: Any, minutes: int) -> Any:
    """The message with its timestamps (ISO 8601, nanoseconds since the epoch) `minutes` later."""
    if not minutes:
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in _TIME_KEYS and isinstance(v, str) and "T" in v:
                with contextlib.suppress(ValueError):
                    v = (datetime.fromisoformat(v) + timedelta(minutes=minutes)).isoformat()
            elif k in ("startTimeNanos", "endTimeNanos") and isinstance(v, str) and v.isdigit():
                v = str(int(v) + minutes * 60 * 10**9)
            elif k == "time" and isinstance(v, str) and len(v) == 8 and v[2] == ":":
                v = f"{(int(v[:2]) + minutes // 60) % 24:02d}:{int(v[3:5]) + 0:02d}:{minutes % 60:02d}"
            out[k] = _shift_times(v, minutes)
        return out
    if isinstance(value, list):
        return [_shift_times(v, minutes) for v in value]
    return value


def _get(value: Any, path: tuple) -> Any:
    for p in path:
        value = value[p]
    return value


@st.composite
def batches(draw: st.DrawFn, preset: str, max_messages: int = 8) -> list[RawMessage]:
    out: list[RawMessage] = []
    for n in range(draw(st.integers(1, max_messages))):
        out += draw(_message(preset, 10 * n))
    return out


# --- the stores ---------------------------------------------------------------------------------
class World:
    """A real SQLite FHIR store and dead-letter store, the preset's templates, its devices registered."""

    def __init__(self, directory: Path, preset: str, templates: TemplateFiles | None = None) -> None:
        self.preset = preset
        self.store = SqliteFhirStore(directory / "fhir.db")
        self.dead_letters = SqliteDeadLetterStore(directory / "deadletters.db")
        self.templates = templates or TemplateFiles(*preset_paths(preset))
        self.identity = IdentityResolver(self.store, "Lookup")
        self.store.update({"resourceType": "Patient", "id": PATIENT, "active": True,
                           "identifier": [{"value": v} for v in PATIENT_IDENTIFIERS]})
        for body, props, system in SAMPLES[preset]:
            result = self.templates.current().devices.normalize(body, properties=props, system_properties=system,
                                                                ingested_at=NOW)
            for device_id in {m.device_id for m in result.measurements}:
                rid = "fz-" + hashlib.sha256(device_id.encode()).hexdigest()[:20]
                self.store.update({"resourceType": "Device", "id": rid, "identifier": [{"value": device_id}],
                                   "status": "active", "patient": {"reference": f"Patient/{PATIENT}"}})
        # 2 MB: lets a 1 MB time-zone name reach the templates instead of being refused as oversized.
        self.deps = IngestDeps(store=self.store, dead_letters=self.dead_letters, templates=self.templates.current,
                               identity=self.identity, clock=FixedClock(NOW), max_bytes=2 * 1024 * 1024)

    def close(self) -> None:
        self.dead_letters.close()
        close = getattr(self.store, "close", None)
        if close:
            close()


@dataclass
class Accounting:
    outcomes: list[str] = field(default_factory=list)  # per message: written | superseded | dead_lettered | unaccounted
    reasons: dict[str, int] = field(default_factory=dict)  # dead-lettered messages by their letter's reason
    unspecific: list[str] = field(default_factory=list)  # dead-letter reasons that name no cause
    phantoms: list[str] = field(default_factory=list)  # Observations no message that was not parked explains

    def count(self, outcome: str) -> int:
        return self.outcomes.count(outcome)


def account(world: World, batch: list[RawMessage]) -> Accounting:
    """What the stores say happened to each message of `batch` (see the module docstring)."""
    letters = {bytes(d.payload): d.reason for d in world.dead_letters.list(limit=100_000)}
    out = Accounting()
    out.unspecific = [r for r in letters.values() if r in UNSPECIFIC_REASONS]
    readings = [None if m.body in letters else _readings(world, m) for m in batch]
    for i, message in enumerate(batch):
        if message.body in letters:
            out.outcomes.append(DEAD_LETTERED)
            reason = letters[message.body]
            out.reasons[reason] = out.reasons.get(reason, 0) + 1
            continue
        mine = readings[i]
        if not mine:
            out.outcomes.append("unaccounted")
            continue
        later = readings[i + 1:]
        replaced = [_replaced(world, r, later) for r in mine]
        if all(replaced):  # every reading replaced by a later message's that is in the store
            out.outcomes.append(SUPERSEDED)
        elif all(rep or _present(world, r) for rep, r in zip(replaced, mine, strict=True)):
            out.outcomes.append(WRITTEN)
        else:
            out.outcomes.append("unaccounted")
    explained = {obs_id for rs in readings if rs for r in rs for obs_id, _ in r.observations}
    out.phantoms = [o["id"] for o in world.store.search("Observation", {"_count": "1000"}).resources
                    if o["id"] not in explained]
    return out


@dataclass(frozen=True)
class _Reading:
    key: tuple
    time: datetime
    observations: tuple[tuple[str, frozenset[str]], ...]  # (Observation id, values the reading puts there)


def _readings(world: World, message: RawMessage) -> list[_Reading] | None:
    """Where each reading of the message belongs, mapped on its own; None if it cannot be mapped."""
    pair = world.templates.current()
    try:
        result = pair.devices.normalize(json.loads(message.body), properties=message.properties,
                                        system_properties=message.system_properties, ingested_at=NOW)
        out = []
        for m in result.measurements:
            [group] = group_measurements([m])
            who = world.identity.resolve(group)
            changes = pair.fhir.observations(group, patient_id=who.patient_id, device_id=who.device_id,
                                             encounter_id=who.encounter_id, now=NOW)
            out.append(_Reading(group.key, m.occurrence_time,
                                tuple((c.id, frozenset(_values(c.resource))) for c in changes)))
        return out if result.ok else None
    except Exception:
        return None


def _present(world: World, reading: _Reading) -> bool:
    for obs_id, values in reading.observations:
        try:
            stored = world.store.read("Observation", obs_id)
        except (ResourceNotFound, ResourceGone):
            return False
        if not values <= set(_values(stored)):
            return False
    return True


def _replaced(world: World, reading: _Reading, later: list[list[_Reading] | None]) -> bool:
    """A later message's reading of the same time in the same Observation is in the store."""
    ids = {obs_id for obs_id, _ in reading.observations}
    return any(r.time == reading.time and ids & {obs_id for obs_id, _ in r.observations} and _present(world, r)
               for rs in later if rs for r in rs)


def _values(resource: dict[str, Any]) -> list[str]:
    out = []
    for holder in [resource, *resource.get("component", [])]:
        quantity = holder.get("valueQuantity")
        if quantity is not None and "value" in quantity:
            out.append(_number(quantity["value"]))
        sampled = holder.get("valueSampledData")
        if sampled is not None:
            out += [_number(t) for t in str(sampled.get("data", "")).split() if t not in ("E", "U", "L")]
        for name in ("valueString", "valueInteger", "valueBoolean", "valueCodeableConcept"):
            if name in holder:
                out.append(json.dumps(holder[name], sort_keys=True))
    return out


def _number(value: Any) -> str:
    try:
        return str(Decimal(str(value)).normalize())
    except InvalidOperation:
        return str(value)
