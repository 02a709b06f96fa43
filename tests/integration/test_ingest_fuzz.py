"""Property: every device message of every preset ends written, superseded or dead-lettered.

Hypothesis generates batches per shipped preset (tests/support/ingest_fuzz.py): realistic payloads,
fields replaced by hostile values, same-time repeats (valid and invalid), and poison bodies. Each batch
goes through the real handler into a real SQLite FHIR store and dead-letter store; what became of
each message is then read back from the *stores* (not from the handler's report) and must be exactly
one outcome, and the report must say the same.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings

from handlers.ingest import RawMessage, handle_device_messages
from ingest.templates.presets import list_presets
from tests.support.ingest_fuzz import (
    POISON_CLASSES,
    SAMPLES,
    UNSPECIFIC_REASONS,
    World,
    account,
    batches,
    poison,
)


def check(preset: str, batch) -> None:
    with tempfile.TemporaryDirectory() as directory:
        world = World(Path(directory), preset)
        try:
            report = handle_device_messages(batch, world.deps)  # must not raise, whatever the batch holds
            seen = account(world, batch)
        finally:
            world.close()
    assert "unaccounted" not in seen.outcomes, seen.outcomes
    assert not seen.unspecific, seen.reasons
    assert not seen.phantoms  # nothing of a dead-lettered message was written
    assert report.outcomes == seen.outcomes  # the report says what the stores hold
    assert report.written + report.superseded + report.dead_lettered == report.received == len(batch)


@pytest.mark.parametrize("preset", list_presets())
def test_every_message_of_a_fuzzed_batch_is_accounted_for_in_the_stores(preset: str) -> None:
    @settings(max_examples=12, deadline=None)
    @given(batches(preset))
    def run(batch) -> None:
        check(preset, batch)

    run()


@pytest.mark.parametrize("kind", POISON_CLASSES)
def test_each_poison_class_is_a_specific_dead_letter_and_the_batch_goes_on(kind: str) -> None:
    preset = "fitbit" if kind == "long_time_zone" else "iot-hub" if kind == "surrogate_property" else "vigil-generic"
    body, props, system = SAMPLES[preset][0]
    good = RawMessage(json.dumps(body).encode(), props, system)
    bad = poison(kind, preset, 7)
    with tempfile.TemporaryDirectory() as directory:
        world = World(Path(directory), preset)
        report = handle_device_messages([bad, good], world.deps)
        seen = account(world, [bad, good])
        [letter] = world.dead_letters.list()
        world.close()
    assert seen.outcomes == report.outcomes == ["dead_lettered", "written"]
    assert letter.reason not in UNSPECIFIC_REASONS and letter.payload == bad.body
    expected = {"deep_nesting": "nesting_too_deep", "huge_integer": "number_too_large",
                "lone_surrogate": "invalid_unicode", "timestamp_overflow": "value_out_of_range",
                "long_time_zone": "invalid_time_zone", "surrogate_property": "invalid_unicode",
                "broken_json": "invalid_json"}[kind]
    assert letter.reason == expected, (letter.reason, letter.detail)
