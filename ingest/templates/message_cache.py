"""Work shared by the templates of a collection while they evaluate one message: its containers in
document order and its elements grouped by a discriminating key (`message_cache()`)."""

from __future__ import annotations

import threading
from typing import Any


class _MessageCache(threading.local):
    """Work shared by every template of a collection evaluating the same message, kept only while
    `message_cache()` is active (one message) and keyed by object identity:

    * `nodes`: the containers of the message in document order. Walking the message once instead
      of once per template is most of the cost of `$..[?(...)]` matching.
    * `groups`: for JMESPath filters of the shape `X[?key == 'literal']`, the elements of X
      grouped by `key`, so eight templates discriminating on `type` cost one pass, not eight.
    """

    def __init__(self) -> None:
        self.active = False
        self.start: Any = None
        self.nodes: list = []
        self.groups: dict[Any, tuple[Any, dict | None]] = {}

    # A context manager of its own rather than @contextmanager: it is entered once per message, and
    # a generator-based one costs several calls more each time.
    def __enter__(self) -> None:
        self.active = True

    def __exit__(self, *exc_info: object) -> None:
        self.active = False
        self.start, self.nodes = None, []
        self.groups = {}


CACHE = _MessageCache()


def message_cache() -> _MessageCache:
    """Share work between the templates evaluating one message (see `_MessageCache`): a `with` block."""
    return CACHE


def containers(start: Any) -> list:
    """Every object and array in `start`, itself first, in document order (walked once per
    message while `message_cache()` is active)."""
    cache = CACHE
    if cache.active and cache.start is start:
        return cache.nodes
    nodes: list = []
    _collect(start, nodes)
    if cache.active:
        cache.start, cache.nodes = start, nodes
    return nodes


def _collect(item: Any, nodes: list) -> None:
    nodes.append(item)
    for child in (item.values() if type(item) is dict else item):
        kind = type(child)
        if kind is dict or kind is list:
            _collect(child, nodes)
