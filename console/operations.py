"""The operations page's figures: the pipeline-health handler (handlers/pipeline_health.py) over the
services the composition root built. Served as a console page and as JSON (`/console/operations.json`
for staff, `/api/operations` with the local token for monitors); the alert-sweep timer sends the
stalled-pipeline notice through the same handler, without the console."""

from __future__ import annotations

from typing import Any

from handlers import pipeline_health as ph
from runtime.bootstrap import Services, pipeline_deps

MAX_PENDING_AGE_S = ph.MAX_PENDING_AGE_S
MAX_DEAD_LETTERS_24H = ph.MAX_DEAD_LETTERS_24H
MAX_ESCALATION_LAG_S = ph.MAX_ESCALATION_LAG_S


def health(services: Services) -> dict[str, Any]:
    return ph.health(pipeline_deps(services))


def channel_outcomes(services: Services) -> dict[str, dict[str, Any]]:
    return ph.channel_outcomes(pipeline_deps(services))


def escalation_lag_s(services: Services) -> float:
    return ph.escalation_lag_s(pipeline_deps(services))


def check_thresholds(services: Services, *, max_pending_age_s: float = MAX_PENDING_AGE_S,
                     max_dead_letters: int = MAX_DEAD_LETTERS_24H) -> list[str]:
    return ph.check_pipeline(pipeline_deps(services), max_pending_age_s=max_pending_age_s,
                             max_dead_letters=max_dead_letters)
