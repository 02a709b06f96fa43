"""The embedded default channel: each message becomes one JSON file under the data directory.

A file is created with O_EXCL under the message id, so a second send of the same message is a
no-op that reports "duplicate" — the file system is the idempotency record.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from common.storage import private_dir, write_private
from notifications.channels.base import OptOutChecker, OutgoingMessage, SendResult


class OutboxChannel:
    name = "outbox"

    def __init__(self, directory: Path, *, opt_outs: OptOutChecker | None = None) -> None:
        self.directory = Path(directory)
        self.opt_outs = opt_outs  # set when the outbox stands in for SMS (the embedded default)

    def send(self, message: OutgoingMessage) -> SendResult:
        if self.opt_outs is not None and message.category != "consent":
            try:
                opted_out = self.opt_outs.is_opted_out(message.to)
            except ValueError:
                return SendResult("permanent", reason="the SMS address is not a phone number", code="invalid-address")
            if opted_out:
                return SendResult("permanent", reason="the recipient has opted out of SMS (STOP)", code="opted-out")
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
            return SendResult("duplicate", provider_id=path.name)
        finally:
            tmp.unlink(missing_ok=True)
        return SendResult("sent", provider_id=path.name)

    def messages(self) -> list[dict]:
        if not self.directory.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.directory.glob("*.json"))]
