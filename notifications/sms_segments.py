"""How many SMS segments a text takes, per 3GPP TS 23.038 (alphabets) and TS 23.040 (concatenation).

- GSM 7-bit default alphabet: 160 septets in one SMS; a concatenated SMS spends 7 septets of each
  part on the user-data header, leaving 153. Characters of the extension table (`^ { } \\ [ ~ ] | €`
  and form feed) take two septets (escape + code) and are never split across parts.
- Anything outside those tables makes the whole message UCS-2 (UTF-16 here, as carriers send it):
  70 code units in one SMS, 67 per part when concatenated. A character outside the Basic
  Multilingual Plane (most emoji) takes two code units, and its surrogate pair is never split.

Spanish matters here: `é ñ ü ¿ ¡` are in the GSM alphabet but `á í ó ú` are not, so one
accented vowel turns a 160-character message into three UCS-2 segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# TS 23.038 §6.2.1, the default alphabet in code order (0x1B, the escape, is left out: it is not text).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# TS 23.038 §6.2.1.1, the default extension table: each costs the escape septet plus its own.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

SINGLE_GSM7, MULTI_GSM7 = 160, 153
SINGLE_UCS2, MULTI_UCS2 = 70, 67

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True)
class SegmentInfo:
    encoding: Encoding
    characters: int  # len() of the text (code points)
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int
    per_segment: int  # capacity of each part at this length: 160/153 or 70/67
    non_gsm: tuple[str, ...] = ()  # the characters that forced UCS-2, in first-seen order


def is_gsm7(text: str) -> bool:
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def _pack(costs: list[int], single: int, multi: int) -> int:
    """Segments needed for characters of the given costs, never splitting one character."""
    total = sum(costs)
    if total == 0:
        return 0
    if total <= single:
        return 1
    segments, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            segments += 1
            used = 0
        used += cost
    return segments


def count_segments(text: str) -> SegmentInfo:
    if is_gsm7(text):
        costs = [2 if c in GSM7_EXTENSION else 1 for c in text]
        segments = _pack(costs, SINGLE_GSM7, MULTI_GSM7)
        return SegmentInfo("GSM-7", len(text), sum(costs), segments, SINGLE_GSM7 if segments <= 1 else MULTI_GSM7)
    costs = [2 if ord(c) > 0xFFFF else 1 for c in text]
    segments = _pack(costs, SINGLE_UCS2, MULTI_UCS2)
    seen: dict[str, None] = {}
    for c in text:
        if c not in GSM7_BASIC and c not in GSM7_EXTENSION:
            seen.setdefault(c, None)
    return SegmentInfo("UCS-2", len(text), sum(costs), segments, SINGLE_UCS2 if segments <= 1 else MULTI_UCS2,
                       tuple(seen))


@dataclass(frozen=True)
class SmsBudget:
    """The most an SMS may take. `max_chars` defaults to 160: the TCPA healthcare exemption limits
    exempt texts to 160 characters (FCC 15-72); `max_segments` bounds cost and splitting
    (3 lets a 160-character message with Spanish accents, which is UCS-2, through)."""

    max_segments: int = 3
    max_chars: int | None = 160

    def __post_init__(self) -> None:
        if self.max_segments < 1:
            raise ValueError("an SMS budget needs at least one segment")
        if self.max_chars is not None and self.max_chars < 1:
            raise ValueError("an SMS budget needs at least one character")


class SmsBudgetExceeded(ValueError):
    def __init__(self, message: str, info: SegmentInfo) -> None:
        super().__init__(message)
        self.info = info


def check_budget(text: str, budget: SmsBudget) -> SegmentInfo:
    """The text's segment count, or SmsBudgetExceeded saying by how much and why."""
    info = count_segments(text)
    problems = []
    if budget.max_chars is not None and info.characters > budget.max_chars:
        problems.append(f"{info.characters} characters (limit {budget.max_chars})")
    if info.segments > budget.max_segments:
        problems.append(f"{info.segments} {info.encoding} segments (limit {budget.max_segments})")
    if problems:
        why = ""
        if info.non_gsm:
            shown = " ".join(repr(c) for c in info.non_gsm[:8])
            why = f"; UCS-2 because of {shown} (70 characters per single SMS instead of 160)"
        raise SmsBudgetExceeded(f"SMS too long: {' and '.join(problems)}{why}", info)
    return info
