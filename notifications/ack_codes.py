"""Acknowledgement codes: the short code a clinician texts back (`ACK <code>`) to acknowledge an
alert by SMS. The code is an identifier `urn:vigil:ack-code` on the episode's Task, so
`Task?identifier=` finds the Task it answers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from common.codes import vigil_system
from notifications.escalation_chains import EscalationError

ACK_CODE_SYSTEM = vigil_system("ack-code")
# Letters and digits a person reads off a phone and types back without doubt: no 0/O, 1/I/L, 2/Z,
# 5/S, 8/B. 26^6 is about 3e8 codes, so two open alerts rarely share one (and the sender's care
# team tells them apart when they do).
ACK_CODE_ALPHABET = "ACDEFGHJKMNPQRTUVWXY346789"
ACK_CODE_LENGTH = 6


def ack_code_from_mac(mac: bytes) -> str:
    """The acknowledgement code for a Task, from a MAC over its id (deterministic: a re-run of the
    same step texts the same code; keyed: codes cannot be worked out from Task ids)."""
    if len(mac) < 8:
        raise EscalationError("an acknowledgement code needs at least 8 bytes of MAC")
    number = int.from_bytes(mac, "big")
    chars = []
    for _ in range(ACK_CODE_LENGTH):
        number, index = divmod(number, len(ACK_CODE_ALPHABET))
        chars.append(ACK_CODE_ALPHABET[index])
    return "".join(chars)


def normalize_ack_code(text: str | None) -> str | None:
    """The code as Vigil stores it (upper case, no spaces or dashes), or None when `text` cannot be
    one. People type codes in any case and sometimes split them ("k7m-x3q")."""
    if not text:
        return None
    code = re.sub(r"[\s\-]", "", text).upper()
    if len(code) != ACK_CODE_LENGTH or any(c not in ACK_CODE_ALPHABET for c in code):
        return None
    return code


def ack_code_of(task: Mapping[str, Any]) -> str | None:
    for ident in task.get("identifier", []) or []:
        if ident.get("system") == ACK_CODE_SYSTEM and ident.get("value"):
            return str(ident["value"])
    return None


def with_ack_code(task: Mapping[str, Any], code: str) -> tuple[dict[str, Any], bool]:
    """The Task carrying `code` as its `urn:vigil:ack-code` identifier (returns changed). A Task
    that already has a code keeps it: messages already sent quote that one."""
    if normalize_ack_code(code) != code:
        raise EscalationError(f"{code!r} is not an acknowledgement code ({ACK_CODE_LENGTH} of {ACK_CODE_ALPHABET})")
    if ack_code_of(task) is not None:
        return dict(task), False
    updated = dict(task)
    updated["identifier"] = [*(task.get("identifier", []) or []), {"system": ACK_CODE_SYSTEM, "value": code}]
    return updated, True


