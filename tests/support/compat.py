"""Where the compatibility data lives (beside the repository, not inside it), and what its absence means.

The data sits next to the checkout (`<parent>/shared/compat/`: `iomt-fhir/`, `sql-on-fhir-v2/`,
`fhir-anonymizer/`); a git worktree nested deeper than the main checkout still finds it by walking up,
and `$VIGIL_COMPAT_DIR` points at another copy of that folder.

Without the data a developer's run skips these tests, but CI (any non-empty `$CI`, set by `.ci/run`)
fails them: a CI run that quietly skipped every compatibility test would look green and prove nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV = "VIGIL_COMPAT_DIR"


def compat_root() -> Path:
    """`$VIGIL_COMPAT_DIR`, else the first `shared/compat` beside an ancestor of this file."""
    override = os.environ.get(ENV)
    if override:
        return Path(override)
    here = Path(__file__).resolve()
    for ancestor in here.parents:
        candidate = ancestor / "shared" / "compat"
        if candidate.is_dir():
            return candidate
    return here.parents[3] / "shared" / "compat"


def compat_path(*parts: str) -> Path:
    """A file or folder of the compatibility data (it may not exist; see `require`)."""
    return compat_root().joinpath(*parts)


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def require(path: Path) -> Path:
    """`path` if it exists; else skip the test, or fail it under CI."""
    if not path.exists():
        missing(path)
    return path


def missing(path: Path) -> None:
    message = f"compatibility data not found at {path} (lay shared/compat beside the clone or set ${ENV})"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def available(path: Path) -> bool:
    """For collection-time lists (parametrize): False only outside CI. Under CI a missing folder fails
    collection, since an empty parameter list would skip without a word."""
    if path.exists():
        return True
    if in_ci():
        raise pytest.UsageError(f"compatibility data not found at {path}: CI must run the compatibility tests")
    return False
