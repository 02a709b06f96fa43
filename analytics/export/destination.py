"""Where an export lands: a local folder, or Azure Data Lake Storage Gen2 (the dfs endpoint, or its Blob API).

The exporter writes each run's files into a local staging folder first; a destination then makes them
durable in place (`publish`) before the exporter moves the watermark (`write` of `_vigil/state.json`, the
commit point). The same layout everywhere (docs/analytics.md, "Layout"): DEST/result/…, DEST/deleted/…,
DEST/_vigil/state.json, DEST/_vigil/schema/….

- Local: the staging folder is DEST/_vigil/staging/<run>; every file is fsynced, each run folder renamed
  into place and its parent folder fsynced, then the state file is replaced atomically (temporary file,
  fsync, rename, fsync of the folder).
- Blob (azure-storage-blob) and Data Lake (azure-storage-file-datalake): staging is a local temporary folder;
  each file is uploaded to its final name (a Put Blob, or the dfs create/append/flush, both durable when
  the service answers success); then the schemas, then the state. A run that failed midway may have left
  some of its files under its own run folder; the state still names the run as pending, and the next run
  deletes those folders before redoing it, so nothing is in the lake twice once the run commits. The SDKs'
  own retry policies handle throttling (429/503) from the service.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError


class DestinationError(RuntimeError):
    """The destination refused a write or a read; the message says which and why (no secrets)."""


class Destination(Protocol):
    label: str
    work: Path  # a local folder for staging and the schema cache

    def read(self, rel: str) -> bytes | None: ...

    def write(self, rel: str, data: bytes) -> None: ...

    def publish(self, staging: Path, dirs: Iterable[Path]) -> None: ...

    def clear(self, run_id: str, dirs: Iterable[str]) -> None: ...

    def close(self) -> None: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalDestination:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.work = self.root
        self.label = str(self.root)

    def read(self, rel: str) -> bytes | None:
        path = self.root / rel
        return path.read_bytes() if path.exists() else None

    def write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def publish(self, staging: Path, dirs: Iterable[Path]) -> None:
        parents: set[Path] = set()
        for rel in sorted(dirs):
            for f in (staging / rel).iterdir():
                _fsync_file(f)
            target = self.root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)  # only a crashed attempt of this same run leaves one
            (staging / rel).rename(target)
            parents.add(target.parent)
        for parent in sorted(parents):
            _fsync_dir(parent)
        shutil.rmtree(staging, ignore_errors=True)

    def clear(self, run_id: str, dirs: Iterable[str]) -> None:
        """Remove every file a run left, staged or already moved (found by its run folder name)."""
        shutil.rmtree(self.root / "_vigil" / "staging" / run_id, ignore_errors=True)
        for kind in ("result", "deleted"):
            for folder in (self.root / kind).glob(f"*/*/*/*/{run_id}"):
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        return None


class _Remote:
    """Shared by the Blob and Data Lake destinations: a local work folder, uploads of whole files."""

    label: str

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.strip("/")
        self.work = Path(tempfile.mkdtemp(prefix="vigil-export-"))

    def _name(self, rel: str) -> str:
        rel = rel.replace(os.sep, "/").strip("/")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _fail(self, what: str, rel: str, exc: AzureError) -> DestinationError:
        code = getattr(exc, "error_code", None) or type(exc).__name__
        code = getattr(code, "value", code)  # the SDK's StorageErrorCode enum, as the service spells it
        status = getattr(exc, "status_code", None)
        detail = f"HTTP {status} {code}" if status else str(code)
        return DestinationError(f"{self.label}: {what} {rel} failed ({detail})")

    def publish(self, staging: Path, dirs: Iterable[Path]) -> None:
        for rel in sorted(dirs):
            for f in sorted((staging / rel).iterdir()):
                name = (rel / f.name).as_posix()
                self.upload(name, f.read_bytes())
        shutil.rmtree(staging, ignore_errors=True)

    def write(self, rel: str, data: bytes) -> None:
        self.upload(rel, data)

    def upload(self, rel: str, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


class BlobDestination(_Remote):
    """A container (and optional folder) through the Blob API: Azure Blob Storage, ADLS Gen2, Azurite."""

    def __init__(self, container: Any, prefix: str = "") -> None:
        super().__init__(prefix)
        self.container = container
        self.label = f"blob container {container.container_name}" + (f"/{self.prefix}" if self.prefix else "")

    def read(self, rel: str) -> bytes | None:
        try:
            return bytes(self.container.get_blob_client(self._name(rel)).download_blob().readall())
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise self._fail("reading", rel, exc) from exc

    def upload(self, rel: str, data: bytes) -> None:
        try:
            self.container.upload_blob(self._name(rel), data, overwrite=True)
        except AzureError as exc:
            raise self._fail("writing", rel, exc) from exc

    def clear(self, run_id: str, dirs: Iterable[str]) -> None:
        for rel in dirs:
            try:
                for blob in self.container.list_blobs(name_starts_with=self._name(rel) + "/"):
                    self.container.delete_blob(blob.name)
            except ResourceNotFoundError:
                continue
            except AzureError as exc:
                raise self._fail("removing", rel, exc) from exc


class DataLakeDestination(_Remote):
    """A file system (and optional folder) of ADLS Gen2 through its dfs endpoint."""

    def __init__(self, file_system: Any, prefix: str = "") -> None:
        super().__init__(prefix)
        self.fs = file_system
        self.label = f"file system {file_system.file_system_name}" + (f"/{self.prefix}" if self.prefix else "")

    def read(self, rel: str) -> bytes | None:
        try:
            return bytes(self.fs.get_file_client(self._name(rel)).download_file().readall())
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise self._fail("reading", rel, exc) from exc

    def upload(self, rel: str, data: bytes) -> None:
        try:
            self.fs.get_file_client(self._name(rel)).upload_data(data, overwrite=True)
        except AzureError as exc:
            raise self._fail("writing", rel, exc) from exc

    def clear(self, run_id: str, dirs: Iterable[str]) -> None:
        for rel in dirs:
            try:
                self.fs.get_directory_client(self._name(rel)).delete_directory()
            except ResourceNotFoundError:
                continue
            except AzureError as exc:
                raise self._fail("removing", rel, exc) from exc


# -- opening a destination from its name ------------------------------------------------------------

def open_destination(dest: str | Path, *, account_key: str | None = None, credential: Any = None,
                     api: str | None = None, retry_total: int | None = None) -> Destination:
    """A destination from a folder path or a storage URL (docs/analytics.md, "Destinations"):

    - ``abfss://FILESYSTEM@ACCOUNT.dfs.core.windows.net/PATH`` (the ABFS driver's URI) or
      ``https://ACCOUNT.dfs.core.windows.net/FILESYSTEM/PATH``: Data Lake (dfs);
    - ``https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH``: Blob;
    - ``http(s)://HOST:PORT/ACCOUNT/CONTAINER/PATH`` (an emulator's path-style URL, e.g. Azurite): Blob,
      or Data Lake with ``api="dfs"``;
    - anything else: a local folder.

    Authentication: the account key when given (Azurite's is public), else `credential` (on Azure,
    DefaultAzureCredential: a managed identity with Storage Blob Data Contributor on the container).
    """
    text = str(dest)
    parts = urlsplit(text)
    if parts.scheme not in ("abfss", "https", "http"):
        return LocalDestination(Path(text))
    if parts.scheme == "abfss":
        if "@" not in parts.netloc:
            raise DestinationError(f"an abfss URL names FILESYSTEM@ACCOUNT.dfs.core.windows.net, got {parts.netloc!r}")
        container, host = parts.netloc.split("@", 1)
        account_url, path, kind = f"https://{host}", parts.path, "dfs"
    else:
        host = parts.hostname or ""
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if ".blob." in host or ".dfs." in host:
            kind = "dfs" if ".dfs." in host else "blob"
            account_url = f"{parts.scheme}://{parts.netloc}"
        else:  # path-style: /ACCOUNT/CONTAINER/...
            if len(segments) < 2:
                raise DestinationError(f"a path-style storage URL is http(s)://HOST/ACCOUNT/CONTAINER[/PATH], "
                                       f"got {parts.path!r}")
            account_url = f"{parts.scheme}://{parts.netloc}/{segments.pop(0)}"
            kind = api or "blob"
        if not segments:
            raise DestinationError(f"the storage URL names no container: {text!r}")
        container, path = segments[0], "/".join(segments[1:])
    if api is not None and api not in ("blob", "dfs"):
        raise DestinationError(f"the storage API is blob or dfs, not {api!r}")
    kind = api or kind
    account_name = _account_name(account_url)
    auth: Any = {"account_name": account_name, "account_key": account_key} if account_key else credential
    if auth is None:
        raise DestinationError(f"{text}: no storage credential (VIGIL_EXPORT_STORAGE_KEY, or "
                               "VIGIL_FHIR_AUTH=azure for DefaultAzureCredential)")
    options: dict[str, Any] = {"retry_total": retry_total} if retry_total is not None else {}
    if kind == "dfs":
        from azure.storage.filedatalake import DataLakeServiceClient

        service = DataLakeServiceClient(account_url.replace(".blob.", ".dfs."), credential=auth, **options)
        return DataLakeDestination(service.get_file_system_client(container), path)
    from azure.storage.blob import BlobServiceClient

    blob_service = BlobServiceClient(account_url.replace(".dfs.", ".blob."), credential=auth, **options)
    return BlobDestination(blob_service.get_container_client(container), path)


def _account_name(account_url: str) -> str:
    parts = urlsplit(account_url)
    host = parts.hostname or ""
    if ".blob." in host or ".dfs." in host:
        return host.split(".", 1)[0]
    return parts.path.strip("/").split("/")[0]


__all__ = ["BlobDestination", "DataLakeDestination", "Destination", "DestinationError", "HttpResponseError",
           "LocalDestination", "open_destination"]
