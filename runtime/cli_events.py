"""`vigil events tail` — Vigil's outgoing workflow events, as JSON lines (DESIGN §8).

Locally, workflow events are published to the bus topic `vigil-events` (runtime.bootstrap). This
command only reads them: a read-only SELECT on the bus file, ordered by sequence number, so it
leases nothing, acknowledges nothing and changes nothing any other reader sees. Each line is one
event in the Event Grid schema, exactly as a subscriber would receive it; the event types are
documented in docs/notifications.md ("Workflow events") and notifications/workflow_events.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from runtime.settings import Settings

POLL_INTERVAL_S = 0.5
DEFAULT_LIMIT = 20


def register(sub: argparse._SubParsersAction) -> None:
    from notifications.workflow_events import SCHEMAS

    events = sub.add_parser("events", help="Vigil's outgoing workflow events (alert lifecycle, failed messages)")
    actions = events.add_subparsers(required=True, metavar="ACTION")
    tail = actions.add_parser(
        "tail", help="print workflow events as JSON lines (Event Grid schema)",
        description="Print the workflow events Vigil published to the local bus, oldest first, one JSON "
                    "object per line. Reading does not consume them.",
        epilog="event types: " + ", ".join(SCHEMAS),
    )
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events until interrupted")
    tail.add_argument("--type", dest="types", action="append", metavar="T",
                      help="only this event type, e.g. Vigil.Alert.Escalated, or a unique ending of one "
                           "such as escalated or message_failed (repeatable)")
    tail.add_argument("-n", "--limit", type=_non_negative, default=DEFAULT_LIMIT, metavar="N",
                      help=f"start with at most the last N matching events (default {DEFAULT_LIMIT}; 0 for all)")
    tail.set_defaults(func=_tail)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def resolve_types(requested: Iterable[str] | None) -> frozenset[str] | None:
    """Full event type names for what the user typed; ValueError names an unknown or ambiguous one."""
    from notifications.workflow_events import SCHEMAS

    if not requested:
        return None
    known = list(SCHEMAS)
    resolved = set()
    for text in requested:
        wanted = _squash(text)
        matches = [t for t in known if _squash(t) == wanted] or [
            t for t in known if wanted and _squash(t).endswith(wanted)
        ]
        if len(matches) != 1:
            problem = "matches more than one event type" if matches else "is not a workflow event type"
            raise ValueError(f"--type {text!r} {problem}; known types: {', '.join(known)}")
        resolved.add(matches[0])
    return frozenset(resolved)


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def read_events(bus_path: Path, topic: str, *, after_seq: int = 0) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(seq, event) for each message on `topic` after `after_seq`, oldest first; event is None when
    the body is not a JSON object. Opens the bus file read-only."""
    if not bus_path.exists():
        return
    conn = sqlite3.connect(bus_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT seq, body FROM messages WHERE topic = ? AND seq > ? ORDER BY seq",
                            (topic, after_seq))
        for seq, body in rows:
            try:
                event = json.loads(bytes(body))
            except (ValueError, UnicodeDecodeError):
                event = None
            yield int(seq), event if isinstance(event, dict) else None
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):  # a bus file no message was ever published to
            raise
    finally:
        conn.close()


def _tail(args: argparse.Namespace, settings: Settings) -> int:
    from runtime.bootstrap import WORKFLOW_EVENTS

    try:
        types = resolve_types(args.types)
    except ValueError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 2
    if settings.workflow_topic_endpoint:
        print("vigil: workflow events go to the configured Event Grid topic; only events published to the "
              "local bus are shown here", file=sys.stderr)
    bus_path = settings.path("bus.db")
    if not bus_path.exists() and not args.follow:
        print(f"vigil: no workflow events yet ({bus_path} does not exist)", file=sys.stderr)
        return 0
    try:
        last = _print_initial(bus_path, WORKFLOW_EVENTS, types, args.limit)
        while args.follow:
            time.sleep(POLL_INTERVAL_S)
            for seq, event in read_events(bus_path, WORKFLOW_EVENTS, after_seq=last):
                last = seq
                _emit(seq, event, types)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `vigil events tail | head`
        sys.stderr.close()
        return 0
    except sqlite3.Error as exc:
        from common.storage import describe, tag_error

        if describe(exc) is not None:  # corrupt, unreadable: the CLI's one line says what to do
            tag_error(exc, str(bus_path))
            raise
        print(f"vigil: cannot read {bus_path}: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_initial(bus_path: Path, topic: str, types: frozenset[str] | None, limit: int) -> int:
    """Print the last `limit` matching events (all when 0); returns the last sequence number seen."""
    last = 0
    shown: deque[tuple[int, dict[str, Any] | None]] = deque(maxlen=limit or None)
    for seq, event in read_events(bus_path, topic):
        last = seq
        if event is None or types is None or event.get("eventType") in types:
            shown.append((seq, event))
    for seq, event in shown:
        _emit(seq, event, types)
    return last


def _emit(seq: int, event: dict[str, Any] | None, types: frozenset[str] | None) -> None:
    if event is None:
        print(f"vigil: bus message {seq} on the workflow topic is not a JSON event; skipped", file=sys.stderr)
        return
    if types is not None and event.get("eventType") not in types:
        return
    print(json.dumps(event, sort_keys=True, separators=(",", ":")), flush=True)
