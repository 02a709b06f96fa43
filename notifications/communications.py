"""The parts of a Vigil `Communication` that the outbox lifecycle, the fallback plan and delivery
reports read and write: identifier systems, extensions and statusReason codings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common.clock import parse_instant
from common.codes import vigil_system

COMMUNICATION_SYSTEM = vigil_system("communication")
PROVIDER_MESSAGE_ID_SYSTEM = vigil_system("provider-message-id")
ATTEMPTS_EXT = vigil_system("delivery-attempts")
NEXT_ATTEMPT_EXT = vigil_system("next-attempt")
DELIVERY_STATUS_EXT = vigil_system("delivery-status")
FAILURE_SYSTEM = vigil_system("send-failure")
# statusReason coding of a message Vigil decided not to send (no channel was called), as opposed to
# FAILURE_SYSTEM, a channel's refusal: quiet-hours, alert-closed.
WITHHELD_SYSTEM = vigil_system("withheld")


def attempts_of(comm: dict[str, Any]) -> int:
    return next((int(e.get("valueInteger", 0)) for e in comm.get("extension", []) if e.get("url") == ATTEMPTS_EXT), 0)


def next_attempt_at(comm: dict[str, Any]) -> datetime | None:
    """When a `preparation` Communication that failed transiently may be tried again (None: now)."""
    for e in comm.get("extension", []):
        if e.get("url") == NEXT_ATTEMPT_EXT and e.get("valueDateTime"):
            return parse_instant(e["valueDateTime"])
    return None


def is_withheld(comm: dict[str, Any]) -> bool:
    """Whether a Communication was recorded as not sent by decision (`Withhold`), not by a channel."""
    return comm.get("status") == "not-done" and any(
        c.get("system") == WITHHELD_SYSTEM for c in (comm.get("statusReason") or {}).get("coding", []))


def reason_text(comm: dict[str, Any]) -> str | None:
    text = (comm.get("statusReason") or {}).get("text")
    return str(text) if text is not None else None


def status_reason(reason: str, code: str | None, system: str = FAILURE_SYSTEM) -> dict[str, Any]:
    value: dict[str, Any] = {"text": reason}
    if code:
        value["coding"] = [{"system": system, "code": code}]
    return value


def own_message_id(comm: dict[str, Any]) -> str | None:
    """The message id a Communication was recorded under (its Vigil identifier's value)."""
    return next((str(i["value"]) for i in comm.get("identifier", [])
                 if i.get("system") == COMMUNICATION_SYSTEM and i.get("value")), None)


def medium_of(comm: dict[str, Any]) -> str | None:
    """The channel a Communication went out on (its `medium` code)."""
    return _first_code(comm.get("medium", []))


def category_of(comm: dict[str, Any]) -> str | None:
    return _first_code(comm.get("category", []))


def _first_code(concepts: list[dict[str, Any]]) -> str | None:
    for concept in concepts:
        for coding in concept.get("coding", []):
            if coding.get("code"):
                return str(coding["code"])
    return None
