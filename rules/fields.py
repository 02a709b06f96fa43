"""The building blocks of the rule language (pydantic): strict models that name unknown keys, metric
names, quantities and durations, thresholds (a fixed quantity, a personal goal bound or a rule
parameter), comparisons and windows. `rules.model` builds rules from them; every condition kind of
`rules.kinds` uses them. Errors carry the offending field in their context so `rules.loader` can
name the YAML line.
"""

from __future__ import annotations

import difflib
import re
from datetime import timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PlainValidator,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from common.codes import METRICS
from rules.quantity import Quantity, format_duration, parse_duration

OPS = (">", ">=", "<", "<=", "==", "!=")
Op = Literal[">", ">=", "<", "<=", "==", "!="]
_COMPARISON = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(>=|<=|==|!=|>|<)\s*(\S.*?)\s*$")


def field_error(field: str, message: str) -> PydanticCustomError:
    """An error about `field` (a dotted path relative to the model that raises it)."""
    return PydanticCustomError("vigil_field", "{message}", {"field": field, "message": message})


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _check_metric(name: str) -> str:
    if name not in METRICS:
        valid = sorted(METRICS)
        raise ValueError(f"unknown metric {name!r}; {_suggest(name, valid)}valid metrics: {', '.join(valid)}")
    return name


def _duration(value: object) -> timedelta:
    return value if isinstance(value, timedelta) else parse_duration(value)


MetricName = Annotated[str, AfterValidator(_check_metric)]
QuantityValue = Annotated[Quantity, PlainValidator(Quantity.parse), PlainSerializer(str)]
Duration = Annotated[timedelta, PlainValidator(_duration), PlainSerializer(format_duration)]


class StrictModel(BaseModel):
    """Unknown keys are errors that list the valid ones (a typo must not silently drop a bound).

    They are collected into `unknown_fields_` first, so the other fields are still validated and
    one load reports every problem of the mapping.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    unknown_fields_: tuple[str, ...] = Field(default=(), exclude=True, repr=False)

    @classmethod
    def valid_fields(cls) -> list[str]:
        return sorted(f.alias or name for name, f in cls.model_fields.items() if name != "unknown_fields_")

    @model_validator(mode="before")
    @classmethod
    def _collect_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            valid = cls.valid_fields()
            unknown = tuple(str(k) for k in data if k not in valid)
            if unknown:
                data = {k: v for k, v in data.items() if k in valid} | {"unknown_fields_": unknown}
        return data

    @field_validator("unknown_fields_")
    @classmethod
    def _reject_unknown(cls, unknown: tuple[str, ...]) -> tuple[str, ...]:
        if unknown:
            valid = cls.valid_fields()
            raise PydanticCustomError(
                "unknown_field", "unknown field '{field}'; {hint}valid fields here: {valid}",
                {"field": unknown[0], "hint": _suggest(unknown[0], valid), "valid": ", ".join(valid)},
            )
        return unknown


# --- thresholds -------------------------------------------------------------------------------

class GoalBound(StrictModel):
    """A personal bound from the patient's active Goal, with the default used when there is none."""

    goal: MetricName
    bound: Literal["high", "low"]
    default: QuantityValue


class ParamRef(StrictModel):
    """A named rule parameter; per-patient overrides change parameters by name."""

    param: str


# Tag names must not equal any YAML key: the loader walks error locations through the data and
# skips the segments (tags) that are not keys.
def _value_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return "goal-bound" if "goal" in value else "param-ref" if "param" in value else None
    tags: dict[type, str] = {GoalBound: "goal-bound", ParamRef: "param-ref"}
    return tags.get(type(value), "fixed-quantity")


ThresholdSpec = Annotated[
    Union[Annotated[QuantityValue, Tag("fixed-quantity")], Annotated[GoalBound, Tag("goal-bound")],  # noqa: UP007
          Annotated[ParamRef, Tag("param-ref")]],
    Discriminator(_value_tag, custom_error_type="invalid_threshold",
                  custom_error_message="a threshold is a number, a quantity such as '2 [lb_av]', "
                  "{goal: <metric>, bound: high|low, default: <quantity>} or {param: <name>}"),
]


class Comparison(StrictModel):
    """`metric op value`, written as a mapping or as one string: `systolic_bp >= 180`."""

    metric: MetricName
    op: Op
    value: ThresholdSpec

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            match = _COMPARISON.match(data)
            if not match:
                raise PydanticCustomError(
                    "invalid_comparison", "'{text}' is not a comparison; write '<metric> <op> <value>' with op one "
                    "of {ops}, e.g. 'systolic_bp >= 180'", {"text": data, "ops": " ".join(OPS)})
            return {"metric": match.group(1), "op": match.group(2), "value": match.group(3)}
        return data


class Windowed(StrictModel):
    within: Duration | None = None
    days: int | None = Field(default=None, ge=0, le=366)

    @model_validator(mode="after")
    def _one_window(self) -> Windowed:
        if (self.within is None) == (self.days is None):
            raise field_error("within", "give exactly one window: `within` (rolling, e.g. 24h, 7d) or `days` "
                              "(calendar days in the patient's time zone: 0 = today, 1 = since yesterday began)")
        return self

    def window_text(self) -> str:
        if self.within is not None:
            return f"the {format_duration(self.within)} up to"
        return "today up to" if self.days == 0 else f"the calendar days since {self.days} day(s) before,"

    def span(self) -> timedelta:
        return self.within if self.within is not None else timedelta(days=(self.days or 0) + 1)
