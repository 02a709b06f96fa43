"""Typed FHIR errors. Every adapter raises these, never transport-specific exceptions."""

from __future__ import annotations

from typing import Any


class FhirError(Exception):
    """A FHIR interaction failed. `status` is the HTTP status a server would answer with."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None, outcome: dict[str, Any] | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.outcome = outcome or operation_outcome("error", _default_code(self.status), message)


class InvalidResource(FhirError):
    status = 400


class InvalidSearch(FhirError):
    status = 400


class Unauthorized(FhirError):
    status = 401


class Forbidden(FhirError):
    status = 403


class ResourceNotFound(FhirError):
    status = 404


class ResourceGone(FhirError):
    """The resource was deleted (FHIR answers 410 Gone)."""

    status = 410


class Conflict(FhirError):
    status = 409


class PreconditionFailed(FhirError):
    """If-Match did not match, or a conditional interaction matched more than one resource."""

    status = 412


class TooManyRequests(FhirError):
    status = 429


class ServerError(FhirError):
    status = 500


def _default_code(status: int) -> str:
    return {
        400: "invalid",
        401: "login",
        403: "forbidden",
        404: "not-found",
        409: "conflict",
        410: "deleted",
        412: "conflict",
        429: "throttled",
    }.get(status, "exception")


def operation_outcome(severity: str, code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


_BY_STATUS: dict[int, type[FhirError]] = {
    400: InvalidResource,
    401: Unauthorized,
    403: Forbidden,
    404: ResourceNotFound,
    409: Conflict,
    410: ResourceGone,
    412: PreconditionFailed,
    422: InvalidResource,
    429: TooManyRequests,
}


def error_for_status(status: int, message: str, outcome: dict[str, Any] | None = None) -> FhirError:
    """The typed error for an HTTP status and its OperationOutcome (used by HTTP clients)."""
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else FhirError)
    return cls(message, status=status, outcome=outcome)
