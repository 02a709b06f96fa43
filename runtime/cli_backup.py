"""`vigil backup DEST` and `vigil restore SRC`: copies of a data directory (docs/operations.md, "Backup").

SQLite files are copied with SQLite's online backup API (common/sqlite_schema.py), so a backup taken
while `vigil serve` runs is a consistent snapshot of each file. The other small files of the data
directory (the acknowledgement-token key, the demo's as-of time) are copied as they are; the lock
file, SQLite's side files and the message folders are not (the outbox is messages already sent).

A restore writes into the files the host has open, so it refuses while a host holds the data
directory: the host keeps caches of what the files held (stop it, restore, start it again).
"""

from __future__ import annotations

import argparse
import fcntl
import shutil
from pathlib import Path

from common.sqlite_schema import copy_database
from common.storage import private_dir, private_file
from runtime.settings import Settings

DATABASES = ("fhir.db", "bus.db", "deadletters.db", "sends.db")
_NOT_COPIED = {"host.lock"}


def register(sub: argparse._SubParsersAction) -> None:
    backup = sub.add_parser("backup", help="copy the data directory to DEST (safe while the host runs)")
    backup.add_argument("dest", type=Path, help="a new or empty directory")
    backup.set_defaults(func=_backup)
    restore = sub.add_parser("restore", help="replace the data directory's files with a backup made by `vigil backup`")
    restore.add_argument("src", type=Path, help="a directory written by `vigil backup`")
    restore.set_defaults(func=_restore)


def backup(data_dir: Path, dest: Path) -> list[str]:
    """Copy `data_dir`'s files into `dest`; returns the names copied."""
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"vigil: {dest} is not empty; back up into a new or empty directory")
    return _copy(data_dir, private_dir(dest))


def restore(src: Path, data_dir: Path) -> list[str]:
    """Copy a backup's files into `data_dir`; refused while a host runs on it."""
    if not any((src / name).is_file() for name in DATABASES):
        raise SystemExit(f"vigil: {src} holds none of {', '.join(DATABASES)}: not a Vigil backup")
    private_dir(data_dir)
    if host_running(data_dir):
        raise SystemExit(f"vigil: a Vigil host is running on {data_dir}; stop it, then restore")
    return _copy(src, data_dir)


def host_running(data_dir: Path) -> bool:
    """Whether a host holds `data_dir`'s lock (runtime/host.py takes it with flock)."""
    lock = data_dir / "host.lock"
    if not lock.exists():
        return False
    with open(lock, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _copy(src: Path, dest: Path) -> list[str]:
    copied = []
    for path in sorted(src.iterdir()):
        name = path.name
        if not path.is_file() or name in _NOT_COPIED or name.endswith(("-wal", "-shm", "-journal")):
            continue
        if name in DATABASES:
            copy_database(path, dest / name)
        else:
            private_file(dest / name)
            shutil.copyfile(path, dest / name)
        copied.append(name)
    return copied


def _backup(args: argparse.Namespace, settings: Settings) -> int:
    names = backup(Path(settings.data_dir), args.dest)
    print(f"backed up {len(names)} file(s) of {settings.data_dir} to {args.dest}: {', '.join(names)}")
    return 0


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    names = restore(args.src, Path(settings.data_dir))
    print(f"restored {len(names)} file(s) from {args.src} into {settings.data_dir}: {', '.join(names)}")
    return 0
