"""Progress for long `vigil` commands (ingest, dead-letter replay): a tqdm bar on stderr, shown on a
terminal (or with --progress), never mixed into the JSON on stdout."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def bar(total: int, what: str, *, force: bool = False) -> Any:
    """A progress bar over `total` items; without a terminal (pipes, CI) it stays silent unless forced."""
    from tqdm import tqdm

    return tqdm(total=total, unit=what, desc=what, file=sys.stderr, disable=False if force else None,
                dynamic_ncols=True, leave=True)


def drain_progress(progress: Any, remaining: Callable[[], int]) -> Callable[[], None]:
    """An `on_progress` callback for LocalHost.run_until_idle that moves the bar to what is done."""
    total = progress.total or 0

    def update() -> None:
        done = max(0, total - remaining())
        if done > progress.n:
            progress.update(done - progress.n)

    return update
