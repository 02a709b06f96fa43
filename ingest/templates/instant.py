"""Reading times at .NET's resolution, 100 ns, where Python's datetime stops at 1 µs.

MedTech reads timestamps into .NET `DateTime`s, whose unit is the 100-ns tick, and writes them back
with all seven fraction digits: an IoT Hub `iothub-creation-time-utc` of
`2019-01-30T22:45:02.6073744Z` stays `...02.6073744Z` in the Observation, and two readings 100 ns
apart stay two readings. `datetime.fromisoformat` keeps six digits, so Vigil would collapse them.

`Instant` is a UTC `datetime` that also carries `extra_ticks`, the 0-9 ticks beyond its
`microsecond`. It is a datetime everywhere (comparisons with the clock, `astimezone`, adding a
timedelta, `isoformat`) and compares, sorts and hashes by the full tick count, so grouping and
de-duplication see two readings 100 ns apart as two. A difference of two Instants is a `timedelta`
(microseconds); `ticks_of(a) - ticks_of(b)` is exact.

`parse_iso` reads any number of fraction digits: up to seven exactly, more rounded to the nearest
tick (half to even, as .NET's `Math.Round` in `DateTime.Parse`).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

TICKS_PER_MICROSECOND = 10
TICKS_PER_SECOND = 10_000_000
_DOTNET_EPOCH = datetime(1, 1, 1, tzinfo=UTC)  # .NET DateTime.Ticks count from here
_DIGITS = re.compile(r"\d*")


class Instant(datetime):
    """An aware datetime with 100-ns resolution (see the module docstring)."""

    __slots__ = ("extra_ticks",)
    extra_ticks: int

    def __new__(cls, *args: Any, extra_ticks: int = 0, **kwargs: Any) -> Instant:
        self = super().__new__(cls, *args, **kwargs)
        if not 0 <= extra_ticks < TICKS_PER_MICROSECOND:
            raise ValueError(f"extra_ticks must be 0-9, got {extra_ticks}")
        self.extra_ticks = extra_ticks
        return self

    @classmethod
    def of(cls, value: datetime, extra_ticks: int = 0) -> Instant:
        """`value` (aware) with `extra_ticks` beyond its microsecond."""
        return cls(value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond,
                   value.tzinfo, fold=value.fold, extra_ticks=extra_ticks)

    @classmethod
    def from_ticks(cls, ticks: int) -> Instant:
        """The UTC instant `ticks` .NET ticks (100 ns) after 0001-01-01T00:00:00Z."""
        micros, extra = divmod(ticks, TICKS_PER_MICROSECOND)
        return cls.of(_DOTNET_EPOCH + timedelta(microseconds=micros), extra)

    @property
    def ticks(self) -> int:
        return ticks_of(self)

    # -- comparison by the full tick count -------------------------------------------------------
    def _order(self, other: Any) -> int | None:
        if not isinstance(other, datetime):
            return None
        if datetime.__eq__(self, other):
            mine, theirs = self.extra_ticks, getattr(other, "extra_ticks", 0)
            return (mine > theirs) - (mine < theirs)
        return -1 if datetime.__lt__(self, other) else 1

    def __eq__(self, other: object) -> bool:
        order = self._order(other)
        return NotImplemented if order is None else order == 0

    def __ne__(self, other: object) -> bool:
        order = self._order(other)
        return NotImplemented if order is None else order != 0

    def __lt__(self, other: date) -> bool:
        order = self._order(other)
        return NotImplemented if order is None else order < 0

    def __le__(self, other: date) -> bool:
        order = self._order(other)
        return NotImplemented if order is None else order <= 0

    def __gt__(self, other: date) -> bool:
        order = self._order(other)
        return NotImplemented if order is None else order > 0

    def __ge__(self, other: date) -> bool:
        order = self._order(other)
        return NotImplemented if order is None else order >= 0

    def __hash__(self) -> int:
        # Equal to a datetime when it has no extra ticks, so it must hash like one.
        base = datetime.__hash__(self)
        return base if not self.extra_ticks else hash((base, self.extra_ticks))

    # -- datetime operations that would drop the extra ticks ------------------------------------
    def __add__(self, other: Any) -> Any:
        result = datetime.__add__(self, other)
        return result if result is NotImplemented else Instant.of(result, self.extra_ticks)

    __radd__ = __add__

    def __sub__(self, other: Any) -> Any:
        result = datetime.__sub__(self, other)
        if isinstance(other, timedelta) and result is not NotImplemented:
            return Instant.of(result, self.extra_ticks)
        return result  # a timedelta between two datetimes: microseconds

    def astimezone(self, tz: tzinfo | None = None) -> Instant:
        if tz is not None and tz is self.tzinfo:
            return self  # immutable; what datetime.astimezone returns too
        return Instant.of(datetime.astimezone(self, tz), self.extra_ticks)

    def replace(self, *args: Any, **kwargs: Any) -> Instant:
        extra = kwargs.pop("extra_ticks", None)
        result = datetime.replace(self, *args, **kwargs)
        if extra is None:  # a new microsecond starts a new tick count
            extra = 0 if ("microsecond" in kwargs or len(args) >= 7) else self.extra_ticks
        return Instant.of(result, extra)

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        if not self.extra_ticks or timespec != "auto":
            return datetime.isoformat(self, sep, timespec)
        text = datetime.isoformat(self, sep, "microseconds")
        return text[:26] + str(self.extra_ticks) + text[26:]  # after "YYYY-MM-DDTHH:MM:SS.ffffff"

    def __repr__(self) -> str:
        return f"Instant({self.isoformat()})"

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:  # datetime defines __reduce_ex__
        return (Instant.of, (_plain(self), self.extra_ticks))


def _plain(value: datetime) -> datetime:
    return datetime(value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond,
                    value.tzinfo, fold=value.fold)


def ticks_of(value: datetime) -> int:
    """.NET ticks (100 ns) of an aware datetime since 0001-01-01T00:00:00Z."""
    micros = (value - _DOTNET_EPOCH) // timedelta(microseconds=1)
    return micros * TICKS_PER_MICROSECOND + getattr(value, "extra_ticks", 0)


def fraction_digits(value: datetime) -> str:
    """The fraction of the second in seven digits (100 ns), e.g. "6073744"."""
    return f"{value.microsecond:06d}{getattr(value, 'extra_ticks', 0)}"


def parse_iso(text: str) -> datetime:
    """`datetime.fromisoformat`, keeping the fraction to the tick. Aware or naive, as written;
    an Instant only when the text has digits beyond the microsecond."""
    dot = text.find(".")
    if dot == -1:
        dot = text.find(",")
        if dot == -1:  # no fraction: the common case of device clocks
            return datetime.fromisoformat(text)
    end = _DIGITS.match(text, dot + 1).end()  # type: ignore[union-attr]  # \d* always matches
    digits = text[dot + 1:end]
    # Seconds' fraction only: "HH:MM:SS.f" or basic "THHMMSS.f".
    if len(digits) <= 6 or not (text[dot - 3:dot - 2] == ":" or text[dot - 7:dot - 6] == "T"):
        return datetime.fromisoformat(text)
    if len(digits) == 7:  # .NET's own round-trip ("o") format: exact
        whole = datetime.fromisoformat(f"{text[:dot]}.{digits[:6]}{text[end:]}")
        extra = int(digits[6])
        return Instant.of(whole, extra) if extra else whole
    ticks = int((Decimal(f"0.{digits}") * TICKS_PER_SECOND).to_integral_value(ROUND_HALF_EVEN))
    micros, extra = divmod(ticks, TICKS_PER_MICROSECOND)
    shifted = datetime.fromisoformat(text[:dot] + text[end:]) + timedelta(microseconds=micros)
    return Instant.of(shifted, extra) if extra else shifted
