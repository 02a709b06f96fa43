"""The functions of function_app.py as the local host runs them, and the binding objects it builds.

The local analogue of what the Azure Functions host reads from an indexed app: each function's
trigger binding (`function_spec`), its `AzureWebJobs.<name>.Disabled` switch, NCRONTAB schedules and
route templates, and the `azure.functions` objects a trigger receives (`event_hub_event`,
`event_grid_event`), built the way the Functions host builds them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
from croniter import croniter

from runtime.bus import Lease
from runtime.http_app import route_pattern


@dataclass
class FunctionSpec:
    name: str
    trigger: str  # eventHubTrigger | eventGridTrigger | timerTrigger | httpTrigger
    binding: dict[str, Any]
    arg_name: str
    call: Callable[..., Any]
    source: str = ""  # the bus queue that feeds it (event hub / event grid)
    # timers
    cron: croniter | None = None
    next_run: float = 0.0
    # http
    route_regex: re.Pattern[str] | None = None
    methods: tuple[str, ...] = ()
    auth_level: str = "function"
    disabled: bool = False  # the app setting AzureWebJobs.<name>.Disabled (as the Functions host)


_functions_cache: dict[int, list[Any]] = {}


def registered_functions(app: func.FunctionApp) -> list[Any]:
    """app.get_functions() raises on a second call (the azure-functions library indexes an app once): call it once per
    app."""
    key = id(app)
    if key not in _functions_cache:
        _functions_cache[key] = app.get_functions()
    return _functions_cache[key]


def function_spec(fn: Any, resolve: Callable[[str], str]) -> FunctionSpec:
    """How the host runs one registered function: its trigger binding, the queue that feeds it,
    its schedule or route. `resolve` expands binding expressions (%SETTING%) from app settings."""
    bindings = fn.get_bindings_dict()["bindings"]
    trigger = next(b for b in bindings if str(b["type"]).endswith("Trigger"))
    kind = str(trigger["type"])
    spec = FunctionSpec(
        name=fn.get_function_name(),
        trigger=kind,
        binding=trigger,
        arg_name=trigger["name"],
        call=fn.get_user_function(),
    )
    spec.disabled = function_disabled(spec.name)
    if kind == "eventHubTrigger":
        spec.source = "eh:" + resolve(str(trigger["eventHubName"]))
    elif kind == "eventGridTrigger":
        spec.source = "eg:" + spec.name
    elif kind == "timerTrigger":
        spec.cron = croniter(ncrontab_to_croniter(str(trigger["schedule"])), datetime.now(UTC))
        spec.next_run = 0.0 if trigger.get("runOnStartup") else spec.cron.get_next(float)
    elif kind == "httpTrigger":
        spec.route_regex = route_regex(str(trigger.get("route") or spec.name))
        spec.methods = tuple(str(getattr(m, "value", m)).upper() for m in trigger.get("methods") or ["GET", "POST"])
        spec.auth_level = str(
            getattr(trigger.get("authLevel"), "value", trigger.get("authLevel") or "function")
        ).lower()
    return spec


def function_disabled(name: str, environ: dict[str, str] | None = None) -> bool:
    """The Functions host's switch: the app setting `AzureWebJobs.<name>.Disabled` set to true
    (learn.microsoft.com/azure/azure-functions/disable-function). Shells cannot export a name
    with dots, so `AzureWebJobs__<name>__Disabled` is read too."""
    env = os.environ if environ is None else environ
    for key in (f"AzureWebJobs.{name}.Disabled", f"AzureWebJobs__{name}__Disabled"):
        if str(env.get(key, "")).strip().lower() in ("true", "1"):
            return True
    return False


def event_hub_event(lease: Lease) -> func.EventHubEvent:
    return func.EventHubEvent(
        body=lease.body,
        enqueued_time=datetime.fromtimestamp(lease.enqueued_at, UTC),
        partition_key=lease.partition_key,
        sequence_number=lease.seq,
        offset=str(lease.seq),
    )


def event_grid_event(payload: dict[str, Any]) -> func.EventGridEvent:
    when = payload.get("eventTime") or payload.get("time")
    return func.EventGridEvent(
        id=payload["id"],
        data=payload.get("data") or {},
        topic=payload.get("topic") or payload.get("source") or "",
        subject=payload.get("subject") or "",
        event_type=payload.get("eventType") or payload.get("type") or "",
        event_time=datetime.fromisoformat(when.replace("Z", "+00:00")) if when else None,
        data_version=str(payload.get("dataVersion") or payload.get("dataschema") or ""),
    )


def ncrontab_to_croniter(schedule: str) -> str:
    """NCRONTAB puts seconds first ("s m h dom mon dow"); croniter takes seconds last."""
    parts = schedule.split()
    if len(parts) != 6:
        raise ValueError(f"timer schedule {schedule!r} must have 6 fields (seconds first)")
    return " ".join(parts[1:] + parts[:1])


def route_regex(route: str) -> re.Pattern[str]:
    """Functions route templates: {name}, {name?} and {name:constraint} segments."""
    return route_pattern(route)
