"""Why an input could not be ingested. Each reason becomes a dead letter with its detail."""

from __future__ import annotations


class IngestError(Exception):
    """A message Vigil cannot turn into FHIR data.

    reason is a stable machine-readable code (counted in summaries, filterable in the CLI);
    detail says what and where, without quoting values (they may be readings).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
