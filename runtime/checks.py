"""What Vigil checks of its FHIR server when it starts, and says in one line each when missing.

On Azure there is no start-up hook: the first escalation sweep (within a minute of start) makes the
same check and logs the same line (handlers.sweeps.due_search_support)."""

from __future__ import annotations

from fhirstore.errors import FhirError
from handlers.sweeps import due_search_support, missing_due_param_message
from runtime.bootstrap import Services


def server_capability_warnings(services: Services) -> list[str]:
    """One message per capability Vigil depends on that the FHIR store does not have."""
    warnings = []
    try:
        support = due_search_support(services.store)
    except FhirError as exc:  # an outage at start: the first sweep checks again
        return [f"could not read the FHIR server's capabilities (HTTP {exc.status}); the escalation sweep "
                "checks again when it runs"]
    if not support.supported:
        warnings.append(missing_due_param_message(support))
    return warnings
