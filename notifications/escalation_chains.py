"""Escalation chains: their YAML definitions, loaded and checked (errors name file, line and field).

A chain is levels of (roles to notify, channel kinds in order, how long to wait for an
acknowledgement), and what to do when the last level has waited in vain:

    chains:
      crisis:
        levels:
          - {notify: [nurse], channels: [sms, email], wait: 15m}
          - {notify: [physician], channels: [sms], wait: 15m}
          - {notify: [on-call], channels: [sms, email], wait: 30m}
        on_exhausted: {action: repeat-last, times: 2, notify: [care-manager]}

`notifications.escalation` runs a chain over an episode's Task.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

CHANNEL_KINDS = frozenset({"sms", "email"})
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_ISO_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


class EscalationError(ValueError):
    """A chain definition or a Task Vigil cannot use; the message says where and why."""


_Fail = Callable[[tuple[Any, ...], str], EscalationError]  # builds the error for a path in the file


@dataclass(frozen=True)
class Level:
    number: int  # 1-based
    roles: tuple[str, ...]
    channels: tuple[str, ...]
    wait: timedelta
    template: str = "escalation"


@dataclass(frozen=True)
class OnExhausted:
    action: Literal["stop", "repeat-last"] = "stop"
    times: int = 0  # repeats of the last level, for repeat-last
    notify: tuple[str, ...] = ()  # roles told once that nobody acknowledged
    channels: tuple[str, ...] = ("sms", "email")


@dataclass(frozen=True)
class Chain:
    id: str
    levels: tuple[Level, ...]
    on_exhausted: OnExhausted = OnExhausted()
    description: str = ""


def parse_duration(value: Any, where: str) -> timedelta:
    """"15m", "1h", "30s", "2d" or ISO 8601 "PT15M"; positive."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise EscalationError(f"{where}: give a unit, e.g. '{value}m' (s, m, h, d)")
    text = str(value or "").strip()
    match = _DURATION.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"s": timedelta(seconds=amount), "m": timedelta(minutes=amount), "h": timedelta(hours=amount),
                 "d": timedelta(days=amount)}[unit]
    else:
        iso_match = _ISO_DURATION.match(text)
        if not iso_match or text in ("P", "PT"):
            raise EscalationError(f"{where}: {value!r} is not a duration like '15m', '2h' or 'PT15M'")
        d, h, m, s = (int(g) if g else 0 for g in iso_match.groups())
        delta = timedelta(days=d, hours=h, minutes=m, seconds=s)
    if delta <= timedelta(0):
        raise EscalationError(f"{where}: the wait must be longer than zero")
    return delta


def _lines(node: yaml.Node, path: tuple[Any, ...] = (),
           out: dict[tuple[Any, ...], int] | None = None) -> dict[tuple[Any, ...], int]:
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _lines(value, (*path, key.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _lines(value, (*path, i), out)
    return out


def _fmt(path: tuple[Any, ...]) -> str:
    text = ""
    for p in path:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text


def load_chains(source: str | Path, *, known_roles: Iterable[str] | None = None) -> dict[str, Chain]:
    """Chains from a YAML file (or YAML text). Errors name the file, line and field."""
    if isinstance(source, Path) or (
        isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))
    ):
        path = Path(source)
        name, text = str(path), path.read_text(encoding="utf-8")
    else:
        name, text = "<chains>", str(source)
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EscalationError(f"{name}: not valid YAML: {exc}") from None
    lines = _lines(node) if node is not None else {}
    roles = set(known_roles) if known_roles is not None else None

    def fail(path: tuple[Any, ...], message: str) -> EscalationError:
        probe = path
        while probe not in lines and probe:
            probe = probe[:-1]
        return EscalationError(f"{name}:{lines.get(probe, 1)}: {_fmt(path) or 'top level'}: {message}")

    if not isinstance(data, dict) or not isinstance(data.get("chains"), dict) or not data["chains"]:
        raise fail((), "expected a mapping with a non-empty 'chains' mapping")
    unknown_top = set(data) - {"chains"}
    if unknown_top:
        raise fail((), f"unknown key(s) {', '.join(sorted(map(str, unknown_top)))}")
    chains: dict[str, Chain] = {}
    for chain_id, spec in data["chains"].items():
        base = ("chains", chain_id)
        if not isinstance(spec, dict):
            raise fail(base, "expected a mapping with 'levels'")
        unknown = set(spec) - {"levels", "on_exhausted", "description"}
        if unknown:
            raise fail(base, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        raw_levels = spec.get("levels")
        if not isinstance(raw_levels, list) or not raw_levels:
            raise fail((*base, "levels"), "a chain needs at least one level")
        levels = []
        for i, raw in enumerate(raw_levels):
            where: tuple[Any, ...] = (*base, "levels", i)
            if not isinstance(raw, dict):
                raise fail(where, "expected a mapping with notify, channels, wait")
            unknown = set(raw) - {"notify", "channels", "wait", "template"}
            if unknown:
                raise fail(where, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
            level_roles = _roles(raw.get("notify"), (*where, "notify"), roles, fail)
            channels = _channels(raw.get("channels", ["sms", "email"]), (*where, "channels"), fail)
            if "wait" not in raw:
                raise fail(where, "'wait' is required (how long to wait for an acknowledgement)")
            try:
                wait = parse_duration(raw["wait"], _fmt((*where, "wait")))
            except EscalationError as exc:
                raise fail((*where, "wait"), str(exc).split(": ", 1)[-1]) from None
            levels.append(Level(i + 1, level_roles, channels, wait, str(raw.get("template", "escalation"))))
        raw_ex = spec.get("on_exhausted") or {}
        where = (*base, "on_exhausted")
        if not isinstance(raw_ex, dict):
            raise fail(where, "expected a mapping with action (stop | repeat-last), times, notify")
        unknown = set(raw_ex) - {"action", "times", "notify", "channels"}
        if unknown:
            raise fail(where, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        action = raw_ex.get("action", "stop")
        if action not in ("stop", "repeat-last"):
            raise fail((*where, "action"), f"must be 'stop' or 'repeat-last', not {action!r}")
        times = raw_ex.get("times", 1 if action == "repeat-last" else 0)
        if not isinstance(times, int) or isinstance(times, bool) or times < 0 or times > 100:
            raise fail((*where, "times"), "must be a whole number from 0 to 100")
        if action == "stop" and times:
            raise fail((*where, "times"), "only 'repeat-last' repeats")
        notify = _roles(raw_ex.get("notify", []), (*where, "notify"), roles, fail, allow_empty=True)
        ex_channels = _channels(raw_ex.get("channels", ["sms", "email"]), (*where, "channels"), fail)
        chains[str(chain_id)] = Chain(str(chain_id), tuple(levels), OnExhausted(action, times, notify, ex_channels),
                                      str(spec.get("description", "")))
    return chains


def _roles(
    value: Any, where: tuple[Any, ...], known: set[str] | None, fail: _Fail, allow_empty: bool = False
) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or (not value and not allow_empty):
        raise fail(where, "list the care-team roles to notify, e.g. [nurse]")
    for role in value:
        if not isinstance(role, str) or not role:
            raise fail(where, "roles are names like nurse, physician, on-call")
        if known is not None and role not in known:
            raise fail(where, f"unknown role {role!r} (known: {', '.join(sorted(known))})")
    return tuple(value)


def _channels(value: Any, where: tuple[Any, ...], fail: _Fail) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise fail(where, "list channel kinds in order of preference, e.g. [sms, email]")
    bad = [c for c in value if c not in CHANNEL_KINDS]
    if bad:
        raise fail(where, f"unknown channel kind(s) {', '.join(map(str, bad))} (use sms, email)")
    return tuple(value)


