"""The fallback plan: what the next channels of a message need once a provider reports, minutes
after accepting it, that the message did not arrive.

A message with fallbacks keeps, on its own Communication (`FALLBACK_PLAN_EXT`), its key and the
remaining fallbacks' channel, address and rendered text. `pending_fallback` rebuilds from it the
request a synchronous failure of the original would have made (same key `<key>|fallback:<channel>`,
so the same Communication): the two paths, a re-delivered report and an out-of-order one can never
send a fallback twice. The plan holds the recipient's address on each channel (the same value their
Patient/PractitionerRole telecom holds in this store) and the text; it is never logged.
"""

from __future__ import annotations

import logging
from typing import Any

from common.codes import vigil_system
from notifications.communications import category_of, medium_of, own_message_id
from notifications.message_request import DEFAULT_MAX_ATTEMPTS, Fallback, MessageRequest

log = logging.getLogger(__name__)

FALLBACK_PLAN_EXT = vigil_system("fallback-plan")


def plan_extension(request: MessageRequest) -> dict[str, Any] | None:
    """The remaining fallbacks of `request`, as one complex extension (None without fallbacks).

    The key is kept whole (not only its hash) so that the fallback's key, and with it its
    Communication identifier, is exactly the one `fallback_request()` makes on a synchronous failure."""
    if not request.fallbacks:
        return None
    parts: list[dict[str, Any]] = [{"url": "key", "valueString": request.key},
                                   {"url": "max-attempts", "valueInteger": request.max_attempts},
                                   {"url": "urgent", "valueBoolean": request.is_urgent}]
    if request.sweep_resends:
        parts.append({"url": "sweep-resends", "valueBoolean": True})
    for name, value in request.tags.items():
        if name:
            tag = [{"url": "name", "valueString": name}] + ([{"url": "value", "valueString": value}] if value else [])
            parts.append({"url": "tag", "extension": tag})
    for fb in request.fallbacks:
        fields: list[dict[str, Any]] = [{"url": "channel", "valueCode": fb.channel}]
        # FHIR strings may not be empty: an absent part reads back as "" (to, body) or None.
        for part, text in (("to", fb.to), ("body", fb.body), ("subject", fb.subject), ("html", fb.html)):
            if text:
                fields.append({"url": part, "valueString": text})
        parts.append({"url": "fallback", "extension": fields})
    return {"url": FALLBACK_PLAN_EXT, "extension": parts}


def pending_fallback(comm: dict[str, Any]) -> MessageRequest | None:
    """The request for this Communication's first remaining fallback, exactly as a synchronous
    failure of the original request would build it (same key, so same Communication); None when
    the message had no fallbacks (or was recorded before plans were kept)."""
    plan = next((e for e in comm.get("extension", []) if e.get("url") == FALLBACK_PLAN_EXT), None)
    if plan is None:
        return None
    key: str | None = None
    max_attempts = DEFAULT_MAX_ATTEMPTS
    urgent: bool | None = None  # plans written before urgency was kept: derived from the tags
    sweep_resends = False
    tags: dict[str, str] = {}
    fallbacks: list[Fallback] = []
    for part in plan.get("extension", []):
        url = part.get("url")
        if url == "key":
            key = part.get("valueString")
        elif url == "max-attempts":
            max_attempts = int(part.get("valueInteger") or DEFAULT_MAX_ATTEMPTS)
        elif url == "urgent" and isinstance(part.get("valueBoolean"), bool):
            urgent = part["valueBoolean"]
        elif url == "sweep-resends":
            sweep_resends = part.get("valueBoolean") is True
        elif url == "tag":
            sub = _sub_values(part)
            if sub.get("name"):
                tags[sub["name"]] = sub.get("value") or ""
        elif url == "fallback":
            sub = _sub_values(part)
            if sub.get("channel"):
                fallbacks.append(Fallback(sub["channel"], sub.get("to") or "", sub.get("body") or "",
                                          sub.get("subject"), sub.get("html")))
    original = MessageRequest(
        key=key or "", channel=medium_of(comm) or "", to="", body="",
        patient_ref=(comm.get("subject") or {}).get("reference"),
        about_ref=next((a.get("reference") for a in comm.get("about", []) if a.get("reference")), None),
        recipient_ref=next((r.get("reference") for r in comm.get("recipient", []) if r.get("reference")), None),
        category=category_of(comm) or "alert", tags=tags, fallbacks=tuple(fallbacks), max_attempts=max_attempts,
        urgent=urgent, sweep_resends=sweep_resends)
    if not key or original.message_id != own_message_id(comm):
        # A plan that does not belong to this Communication (edited by hand, copied): sending from
        # it could reach the wrong person, so nothing is sent and the reason is left in the log.
        log.warning("message %s has a fallback plan that does not match its identifier; no fallback sent",
                    comm.get("id"))
        return None
    return original.fallback_request()


def _sub_values(extension: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for sub in extension.get("extension", []):
        value = next((v for k, v in sub.items() if k.startswith("value")), None)
        if sub.get("url") and value is not None:
            values[sub["url"]] = value
    return values
