"""De-identifying files (`vigil deidentify IN OUT`) and keys that stay the same from run to run.

The shipped profiles have empty keys, which the anonymizer replaces with random ones per run: hashed ids and
date shifts would then change between incremental exports. So when a configuration leaves a key empty, Vigil
generates one once per data directory (``deid-keys.json``, readable by its owner only) and reuses it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analytics.deid.config import Config, load_config
from analytics.deid.engine import Anonymizer
from analytics.deid.phi_check import collect, leaks
from common import jsonnum

_KEYS = ("cryptoHashKey", "dateShiftKey")


def load_or_create_keys(path: Path) -> dict[str, str]:
    """The data directory's de-identification keys, created owner-only on first use."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise PermissionError(f"{path} must be readable by its owner only (chmod 600)")
        stored = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(stored, dict) and all(isinstance(stored.get(k), str) and stored[k] for k in _KEYS):
            return {k: str(stored[k]) for k in _KEYS}
        raise ValueError(f"{path} lacks {', '.join(_KEYS)}; remove it to generate new keys")
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = {k: secrets.token_hex(32) for k in _KEYS}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(keys, fh)
    return keys


def configured(spec: str | Path, key_file: Path) -> Config:
    """The configuration ``spec`` with any empty key filled from ``key_file``."""
    config = load_config(spec)
    if not config.keys_configured:
        keys = load_or_create_keys(key_file)
        for k in _KEYS:
            if not config.parameters.get(k):
                config.parameters[k] = keys[k]
    return config


def transform_for_export(spec: str | Path, key_file: Path) -> Callable[[dict[str, Any]], dict[str, Any]]:
    anonymizer = Anonymizer(configured(spec, key_file))
    return lambda resource: anonymizer.anonymize(resource, folder="export")


def read_resources(path: Path) -> Iterator[dict[str, Any]]:
    """Resources from NDJSON, a JSON resource, a JSON array or a Bundle (its entries)."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if path.suffix == ".ndjson" or (stripped.startswith("{") and "\n{" in stripped.rstrip()):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield jsonnum.loads(line)  # decimals as written (common/jsonnum.py)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path} line {n}: not JSON ({exc.msg})") from exc
        return
    data = jsonnum.loads(text)
    if isinstance(data, list):
        yield from data
    elif isinstance(data, dict) and data.get("resourceType") == "Bundle" and data.get("type") != "document":
        yield from (e["resource"] for e in data.get("entry", []) if isinstance(e, dict) and "resource" in e)
    else:
        yield data


@dataclass
class DeidSummary:
    files: int
    resources: int
    leaks: dict[str, int]


def deidentify_path(src: Path, dest: Path, config: Config, *, check: bool = True) -> DeidSummary:
    """De-identify a file or a folder of ``*.json``/``*.ndjson`` into ``dest`` as NDJSON.

    With ``check`` the output is kept only when it carries none of the input's identifiers.
    """
    anonymizer = Anonymizer(config)
    sources = sorted(p for p in src.rglob("*") if p.suffix in (".json", ".ndjson")) if src.is_dir() else [src]
    if not sources:
        raise FileNotFoundError(f"no .json or .ndjson files in {src}")
    outputs: list[tuple[Path, list[dict[str, Any]]]] = []
    phi: dict[str, str] = {}
    count = 0
    for path in sources:
        resources = list(read_resources(path))
        if check:
            phi.update(collect(resources))
        out = [anonymizer.anonymize(r, file_name=path.name, folder=src.name) for r in resources]
        count += len(out)
        target = (dest / path.relative_to(src)).with_suffix(".ndjson") if src.is_dir() else dest
        outputs.append((target, out))
    found = leaks(phi, (r for _, out in outputs for r in out)) if check else {}
    if found:
        return DeidSummary(len(outputs), count, dict(found))
    for target, out in outputs:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text("".join(jsonnum.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
        os.replace(tmp, target)
    return DeidSummary(len(outputs), count, {})
