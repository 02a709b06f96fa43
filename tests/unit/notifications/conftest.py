"""The escalation chains the state-machine and chain-definition tests share."""

from __future__ import annotations

import pytest

from notifications.escalation_chains import Chain, load_chains

CHAINS = """
chains:
  crisis:
    description: Crisis readings
    levels:
      - {notify: [nurse], channels: [sms, email], wait: 15m}
      - {notify: [physician], channels: [sms], wait: 15m}
      - {notify: [on-call], wait: PT30M}
    on_exhausted: {action: repeat-last, times: 1, notify: [care-manager]}
  simple:
    levels:
      - {notify: nurse, wait: 1h}
"""


@pytest.fixture(scope="module")
def chains() -> dict[str, Chain]:
    return load_chains(CHAINS, known_roles=["nurse", "physician", "on-call", "care-manager"])
