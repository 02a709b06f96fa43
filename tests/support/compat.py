"""Where the iomt-fhir compatibility data lives (beside the repository, not inside it)."""

from __future__ import annotations

import os
from pathlib import Path


def compat_root() -> Path:
    """`$VIGIL_COMPAT_DIR`, else the first `shared/compat/iomt-fhir` beside an ancestor of this file.

    The data sits next to the checkout (`<parent>/shared/compat/iomt-fhir`); a git worktree nested
    deeper than the main checkout still finds it by walking up.
    """
    override = os.environ.get("VIGIL_COMPAT_DIR")
    if override:
        return Path(override)
    here = Path(__file__).resolve()
    for ancestor in here.parents:
        candidate = ancestor / "shared" / "compat" / "iomt-fhir"
        if candidate.is_dir():
            return candidate
    return here.parents[3] / "shared" / "compat" / "iomt-fhir"
