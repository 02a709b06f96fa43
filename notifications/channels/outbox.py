"""The embedded default provider: each message becomes one JSON file under the data directory.

A file is created with O_EXCL under the message id, so a second send of the same message is a
no-op that reports "duplicate": the file system is the idempotency record (`idempotency = "self"`,
no send ledger needed). Standing in for SMS (a channel of kind sms), the send pipeline keeps the
SMS rules in front of it: no text to a number that said STOP.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.storage import private_dir, write_private
from notifications.channels.base import Idempotency, OutgoingMessage, ProviderResult
from notifications.channels.config import BuildContext, ProviderSpec


class OutboxProvider:
    idempotency: Idempotency = "self"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return "OutboxProvider()"

    def send(self, message: OutgoingMessage) -> ProviderResult:
        private_dir(self.directory)  # the files hold addresses and working acknowledgement links
        safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in message.message_id)
        path = self.directory / f"{safe_id}.json"
        record = {
            "message_id": message.message_id,
            "channel": message.channel,
            "to": message.to,
            "subject": message.subject,
            "body": message.body,
            "tags": message.tags,
        }
        tmp = path.with_name(f".{safe_id}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.unlink(missing_ok=True)  # left by a process that was killed with this pid and thread id
        write_private(tmp, json.dumps(record, indent=2, sort_keys=True).encode())
        try:
            # link() fails if the target exists: atomic "create if absent" with complete content.
            os.link(tmp, path)
        except FileExistsError:
            return ProviderResult("duplicate", provider_id=path.name)
        finally:
            tmp.unlink(missing_ok=True)
        return ProviderResult("accepted", provider_id=path.name)

    def messages(self) -> list[dict[str, Any]]:
        if not self.directory.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.directory.glob("*.json"))]


def _build(name: str, entry: Mapping[str, Any], context: BuildContext) -> OutboxProvider:
    directory = Path(str(entry.get("directory") or "outbox"))
    if not directory.is_absolute() and context.base_dir is not None:
        directory = Path(context.base_dir) / directory
    return OutboxProvider(directory)


# Any kind: the embedded default stands in for SMS and email, and keeps the staff fallback ("file").
SPEC = ProviderSpec(kinds=("file", "sms", "email"), fields=frozenset({"directory"}), build=_build)


def file_outbox(channel: object) -> OutboxProvider | None:
    """The file outbox behind a configured channel (its files are what the demo counts and the
    retention purge ages), or None for a channel of another provider."""
    from notifications.channels.pipeline import GuardedChannel

    provider = channel.provider if isinstance(channel, GuardedChannel) else channel
    return provider if isinstance(provider, OutboxProvider) else None
