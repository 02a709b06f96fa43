"""The CLI's answer to a storage fault: one line (which file, what happened, what to do) on stderr
and exit status 74 (`EX_IOERR` of sysexits.h); the traceback only with `-v`."""

from __future__ import annotations

import sys
import traceback
from dataclasses import replace
from pathlib import Path

from common.storage import describe, find_unreadable_database

EXIT_STORAGE_FAULT = 74


def report_storage_fault(exc: BaseException, data_dir: Path, *, verbose: bool = False) -> int | None:
    """Print the one-line explanation of `exc` and return the exit status, or None when `exc` is
    not a storage fault (the caller re-raises it)."""
    fault = describe(exc)
    if fault is None:
        return None
    path = fault.path
    if path is None and fault.kind == "corrupt":
        path = find_unreadable_database(data_dir)
    if path is not None and fault.path is None:
        fault = replace(fault, path=path)
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"vigil: {fault.line(data_dir)}", file=sys.stderr)
    return EXIT_STORAGE_FAULT
