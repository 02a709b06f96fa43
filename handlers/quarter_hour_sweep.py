"""What the `alert_sweep` timer runs every 15 minutes, in this order: the alert sweep (absence of
data, deferred patient messages, closing resolved episodes: `handlers.sweeps`), the rules again for
snoozes whose time is up (`handlers.snooze`), then the staff notice if the pipeline itself looks
stalled (`handlers.pipeline_health`). Each part is idempotent, so a repeated or overlapping run
sends nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from handlers.pipeline_health import PipelineDeps, check_pipeline
from handlers.sweeps import SweepReport, recheck_snoozes, run_alert_sweep

if TYPE_CHECKING:
    from handlers.fhir_events import EventDeps


@dataclass(frozen=True)
class QuarterHourDeps:
    """Built by the composition root (`runtime.bootstrap.quarter_hour_deps`)."""

    events: EventDeps  # the FHIR-event handler's: messaging, rulesets, the dead-letter sink
    pipeline: PipelineDeps


@dataclass(frozen=True)
class QuarterHourReport:
    alerts: SweepReport
    snoozes_rechecked: int
    pipeline_problems: list[str]


def run_quarter_hour_sweep(deps: QuarterHourDeps) -> QuarterHourReport:
    m = deps.events.messaging
    alerts = run_alert_sweep(m, deps.events.rulesets)
    rechecked = recheck_snoozes(m.store, m.clock.now(), deps.events)
    return QuarterHourReport(alerts, rechecked, check_pipeline(deps.pipeline))
