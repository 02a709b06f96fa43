"""The acknowledgement link's pages (`/api/ack/{token}`): a button on GET, the result on POST.

The signed link is the credential. GET only shows a form, because link scanners and message
previews fetch every link they see and must not acknowledge an alert; the clinician's POST
acknowledges it (`handlers.acknowledge.acknowledge_by_token`). The pages carry no patient details.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from handlers.acknowledge import acknowledge_by_token
from handlers.messaging import Messaging

ACK_FORM = ("<!doctype html><title>Acknowledge alert</title><form method=post>"
            "<p>Acknowledge this alert and stop its escalation?</p><button>Acknowledge</button></form>")


@dataclass(frozen=True)
class AckPage:
    status: int  # the HTTP status
    html: str


def ack_link_page(m: Messaging, method: str, token: str) -> AckPage:
    """The page for a `method` request of the acknowledgement link carrying `token`."""
    if method.upper() == "GET":
        return AckPage(200, ACK_FORM)
    result = acknowledge_by_token(m, token)
    return AckPage(result.status, f"<!doctype html><title>Vigil</title><p>{escape(result.message)}</p>")
