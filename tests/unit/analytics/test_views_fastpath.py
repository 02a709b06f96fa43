"""The fast evaluator gives what fhirpathpy gives, for every column and filter of the shipped views."""

from __future__ import annotations

import pytest

from analytics.views.definition import compile_view
from analytics.views.duck import shipped_views
from analytics.views.fastpath import compile_fast
from analytics.views.fhirpath import to_json
from tests.unit.analytics.fixtures import observation, patient
from tests.unit.analytics.test_views_duckdb import _bp

RESOURCES = [patient(0), *(observation(i, "pat-1", 60 + i * 0.5) for i in range(4)), _bp(1, 141, 92.5),
             {"resourceType": "DetectedIssue", "id": "di", "status": "final", "severity": "high",
              "patient": {"reference": "Patient/pat-1"},
              "code": {"coding": [{"system": "urn:vigil:rule", "code": "bp-high"}]},
              "identifiedPeriod": {"start": "2026-11-20T09:00:00Z", "end": "2026-11-21T09:00:00Z"},
              "mitigation": [{"action": {"text": "acknowledged"}}]},
             {"resourceType": "Task", "id": "t", "status": "completed", "for": {"reference": "Patient/pat-1"},
              "focus": {"reference": "DetectedIssue/di"}, "owner": {"reference": "Practitioner/nurse-1"},
              "businessStatus": {"coding": [{"code": "1"}]}},
             {"resourceType": "Communication", "id": "c", "status": "completed", "sent": "2026-11-20T09:01:00Z",
              "subject": {"reference": "Patient/pat-1"}, "medium": [{"coding": [{"code": "sms"}]}]}]


def _expressions() -> list[tuple[str, object]]:
    out = []
    for name, raw in shipped_views().items():
        view = compile_view(raw)
        out.extend((f"{name}: {e.text}", e) for e in view.where)

        def visit(sel: object, name: str = name) -> None:
            out.extend((f"{name}: {c.path.text}", c.path) for c in sel.columns)  # type: ignore[attr-defined]
            for sub in sel.selects:  # type: ignore[attr-defined]
                visit(sub)
            for sub in sel.union_all:  # type: ignore[attr-defined]
                visit(sub)

        visit(view.root)
    return out


@pytest.mark.parametrize(("label", "expr"), _expressions(), ids=lambda x: x if isinstance(x, str) else "")
def test_fast_path_equals_fhirpathpy(label: str, expr: object) -> None:
    env = {"systolic_bp": "8480-6", "diastolic_bp": "8462-4", "bp_code": "85354-9", "rowIndex": 0}
    for resource in RESOURCES:
        slow = [to_json(v) for v in expr.nodes(resource, env)]  # type: ignore[attr-defined]
        assert expr.values(resource, env) == slow, (label, resource["id"])  # type: ignore[attr-defined]


def test_fast_path_covers_the_common_paths_and_declines_the_rest() -> None:
    assert compile_fast("subject.getReferenceKey(Patient)") is not None
    assert compile_fast("code.coding.where(system = 'http://loinc.org').code.first()") is not None
    assert compile_fast("effective.ofType(dateTime).toString().substring(0, 10)") is None
    assert compile_fast("name.family | name.given") is None
