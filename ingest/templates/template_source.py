"""Reading a template file (device or FHIR mapping): a path, JSON text or a parsed document, and the
entries of its root collection."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingest.templates.errors import ErrorList, TemplateError, TemplateIssue


def read_template_source(source: str | Path | dict | list, name: str | None) -> tuple[Any, str]:
    """Accept a path, JSON text, or an already-parsed document. Returns (document, display name).
    Raises TemplateError for unreadable files or invalid JSON."""
    if isinstance(source, dict | list):
        return source, name or "<template>"
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith(("{", "["))):
        path = Path(source)
        display = name or str(path)
        try:
            text = path.read_text(encoding="utf-8-sig")  # MedTech files often carry a BOM
        except OSError as exc:
            raise TemplateError(
                [TemplateIssue(display, None, "", f"cannot read file: {exc.strerror or exc}")]
            ) from None
    else:
        text = source
        display = name or "<template>"
    try:
        return json.loads(text), display
    except ValueError as exc:
        raise TemplateError([TemplateIssue(display, None, "", f"not valid JSON: {exc}")]) from None


def collection_entries(document: Any, errors: ErrorList, *, collection: str, single: frozenset[str],
                       other_file_hint: Callable[[str], bool], other_file: str) -> list[tuple[int, Any]]:
    """The (index, template) entries of a template file's root: a `collection` with a `template`
    array, or one bare template whose type (lower-cased) is in `single`. Shared by the device and
    FHIR mapping loaders; `other_file_hint(kind)` spots the other kind of mapping file."""
    if not isinstance(document, dict):
        errors.add(None, "", "the root must be a JSON object with templateType and template")
        return []
    root_type = document.get("templateType")
    if not isinstance(root_type, str) or not root_type.strip():
        errors.add(None, "templateType", f"templateType is required (expected {collection!r})")
        return []
    kind = root_type.strip().lower()
    if kind in single:  # one bare template: treat as a collection of one
        return [(0, document)]
    if kind != collection.lower():
        hint = f" (this looks like a {other_file} file)" if other_file_hint(kind) else ""
        errors.add(None, "templateType", f"expected {collection!r}, got {root_type!r}{hint}")
        return []
    children = document.get("template")
    if not isinstance(children, list):
        errors.add(None, "template", f"expected an array of templates for {collection}")
        return []
    return list(enumerate(children))
