"""Follow search pages through any `FhirStore` adapter."""

from __future__ import annotations

from fhirstore.errors import FhirError
from fhirstore.port import FhirStore, Resource, SearchParams


class TooManyPages(FhirError):
    """A search kept returning next pages past the caller's limit (or looped on itself)."""

    status = 500


def search_all(
    store: FhirStore, resource_type: str, params: SearchParams | None = None, *, max_pages: int = 1000
) -> list[Resource]:
    """Every match of a search, page after page, in the server's order.

    Raises TooManyPages rather than returning a silently truncated list: a caller that evaluates a
    clinical window must not mistake "first N pages" for "all readings".
    """
    if max_pages < 1:
        raise ValueError(f"max_pages must be >= 1, got {max_pages}")
    resources: list[Resource] = []
    page = store.search(resource_type, params)
    seen: list[object] = []
    for _ in range(max_pages - 1):
        resources.extend(page.resources)
        if page.next_params is None:
            return resources
        if page.next_params in seen:
            raise TooManyPages(f"search {resource_type}: the server's next link repeats an earlier page")
        seen.append(page.next_params)
        page = store.search(resource_type, page.next_params)
    resources.extend(page.resources)
    if page.next_params is not None:
        raise TooManyPages(f"search {resource_type}: more than {max_pages} pages")
    return resources
