"""Follow search pages through any `FhirStore` adapter."""

from __future__ import annotations

import logging
from typing import Literal

from fhirstore.errors import FhirError
from fhirstore.port import FhirStore, Resource, SearchParams

log = logging.getLogger(__name__)


class TooManyPages(FhirError):
    """A search kept returning next pages past the caller's limit (or looped on itself)."""

    status = 500


class TruncatedSearch(FhirError):
    """The server counted more matches (`Bundle.total`) than it returned, and gave no next link:
    the rest of the matches cannot be read (a server that pages without next links, or one that
    caps a page at fewer entries than `_count` asked for)."""

    status = 502


def search_all(
    store: FhirStore,
    resource_type: str,
    params: SearchParams | None = None,
    *,
    max_pages: int = 1000,
    on_truncated: Literal["error", "warn"] = "error",
) -> list[Resource]:
    """Every match of a search, page after page, in the server's order.

    Raises TooManyPages rather than returning a silently truncated list: a caller that evaluates a
    clinical window must not mistake "first N pages" for "all readings". For the same reason a
    last page whose `total` says more matched than arrived raises TruncatedSearch; with
    `on_truncated="warn"` the matches that arrived are returned and a warning says how many are
    missing.
    """
    if max_pages < 1:
        raise ValueError(f"max_pages must be >= 1, got {max_pages}")
    resources: list[Resource] = []
    page = store.search(resource_type, params)
    seen: list[object] = []
    for _ in range(max_pages - 1):
        resources.extend(page.resources)
        if page.next_params is None:
            return _checked_complete(resources, page.total, resource_type, on_truncated)
        if page.next_params in seen:
            raise TooManyPages(f"search {resource_type}: the server's next link repeats an earlier page")
        seen.append(page.next_params)
        page = store.search(resource_type, page.next_params)
    resources.extend(page.resources)
    if page.next_params is not None:
        raise TooManyPages(f"search {resource_type}: more than {max_pages} pages")
    return _checked_complete(resources, page.total, resource_type, on_truncated)


def _checked_complete(resources: list[Resource], total: int | None, resource_type: str,
                      on_truncated: str) -> list[Resource]:
    # `total` counts matches only (FHIR R4 §3.1.1.4.6: not included resources), as `resources` holds.
    if total is None or total <= len(resources):
        return resources
    message = (f"search {resource_type}: the server counted {total} matches but returned {len(resources)} "
               "and no next link to the rest")
    if on_truncated == "warn":
        log.warning("%s; going on with the %d that arrived", message, len(resources))
        return resources
    raise TruncatedSearch(message)
