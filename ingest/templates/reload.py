"""Template files that reload when they change (for `vigil serve`: no restart needed).

`TemplateFiles.current()` is cheap to call per batch: it stats the two files and reloads only when
one changed. A file that no longer loads does not replace the working templates: the previous
pair stays in use and `error` says what is wrong, until the file is fixed. Messages the broken
edit was meant for keep going to the dead-letter store and can be replayed after the fix.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ingest.templates.device import DeviceTemplateSet
from ingest.templates.device_loader import load_device_templates
from ingest.templates.errors import TemplateError
from ingest.templates.fhir import FhirTemplateSet, load_fhir_templates


@dataclass(frozen=True)
class TemplatePair:
    devices: DeviceTemplateSet
    fhir: FhirTemplateSet
    version: int  # increases on every successful reload


class TemplateFiles:
    def __init__(self, device_path: str | Path, fhir_path: str | Path):
        self.device_path = Path(device_path)
        self.fhir_path = Path(fhir_path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._pair: TemplatePair | None = None
        self.error: TemplateError | None = None
        self.current()
        if self._pair is None:
            # The first load must succeed: there is nothing to fall back on.
            assert self.error is not None
            raise self.error

    def _stat(self) -> tuple:
        out: list[tuple[int, int, int] | None] = []
        for path in (self.device_path, self.fhir_path):
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def current(self) -> TemplatePair:
        stamp = self._stat()
        if stamp == self._stamp and self._pair is not None:
            return self._pair
        with self._lock:
            if stamp != self._stamp or self._pair is None:
                self._stamp = stamp
                try:
                    devices = load_device_templates(self.device_path)
                    fhir = load_fhir_templates(self.fhir_path)
                except TemplateError as exc:
                    self.error = exc
                else:
                    version = self._pair.version + 1 if self._pair else 1
                    self._pair = TemplatePair(devices, fhir, version)
                    self.error = None
        if self._pair is None:
            raise self.error or TemplateError([])
        return self._pair
