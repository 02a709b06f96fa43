"""Signed, expiring, single-use link tokens: distinct refusals for forged, expired and reused."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest

from fhirstore.sqlite import SqliteFhirStore
from notifications.channels.ledger import SqliteSendLedger
from notifications.connection import Secret
from notifications.tokens import (
    FhirUsedTokens,
    LedgerUsedTokens,
    MemoryUsedTokens,
    SignedTokens,
    TokenError,
    TokenExpired,
    TokenForged,
    TokenReused,
    TokenWrongPurpose,
)

KEY1 = Secret("k1-0123456789abcdef0123456789abcdef")
KEY2 = Secret("k2-fedcba9876543210fedcba9876543210")


def tokens(clock, used=None, keys=None, current="k1") -> SignedTokens:
    return SignedTokens(keys or {"k1": KEY1}, current=current, used=used or MemoryUsedTokens(), clock=clock)


def test_issue_then_redeem(clock) -> None:
    t = tokens(clock)
    token = t.issue(purpose="ack", subject="Task/9f1c2d3e4b5a69788796a5b4c3d2e1f0", actor="Practitioner/n1")
    assert len(token) < 170  # fits a staff SMS with room to spare
    claims = t.redeem(token, purpose="ack")
    assert (claims.purpose, claims.subject, claims.actor, claims.key_id) == (
        "ack", "Task/9f1c2d3e4b5a69788796a5b4c3d2e1f0", "Practitioner/n1", "k1")
    assert claims.expires_at == clock.now() + timedelta(hours=24)


def test_reuse_is_refused(clock) -> None:
    t = tokens(clock)
    token = t.issue(purpose="ack", subject="Task/t1")
    t.redeem(token, purpose="ack")
    with pytest.raises(TokenReused, match="already used"):
        t.redeem(token, purpose="ack")


def test_expired_is_refused_even_if_never_used(clock) -> None:
    t = tokens(clock)
    token = t.issue(purpose="ack", subject="Task/t1", ttl=timedelta(minutes=30))
    clock.advance(timedelta(minutes=30))
    with pytest.raises(TokenExpired, match="expired at"):
        t.verify(token, purpose="ack")


@pytest.mark.parametrize("mangle", [
    lambda tok: tok[:-2] + ("AA" if not tok.endswith("AA") else "BB"),  # signature altered
    lambda tok: "x" + tok,  # payload altered
    lambda tok: tok.replace(".", ""),  # structure broken
    lambda tok: "not a token",
    lambda tok: "",
])
def test_forged_tokens_are_refused(clock, mangle) -> None:
    t = tokens(clock)
    with pytest.raises(TokenForged):
        t.verify(mangle(t.issue(purpose="ack", subject="Task/t1")), purpose="ack")


def test_a_changed_claim_breaks_the_signature(clock) -> None:
    t = tokens(clock)
    body, mac = t.issue(purpose="ack", subject="Task/t1", actor="Practitioner/n1").split(".")
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    forged_payload = payload.replace("Task/t1", "Task/t2").encode()
    forged = base64.urlsafe_b64encode(forged_payload).rstrip(b"=").decode() + "." + mac
    with pytest.raises(TokenForged, match="signature"):
        t.verify(forged, purpose="ack")


def test_another_installations_token_is_forged(clock) -> None:
    theirs = tokens(clock, keys={"k1": KEY2}).issue(purpose="ack", subject="Task/t1")
    with pytest.raises(TokenForged, match="signature"):
        tokens(clock).verify(theirs, purpose="ack")


def test_wrong_purpose(clock) -> None:
    t = tokens(clock)
    with pytest.raises(TokenWrongPurpose):
        t.verify(t.issue(purpose="questionnaire", subject="Questionnaire/q"), purpose="ack")


def test_refusals_have_distinct_codes() -> None:
    codes = {cls.code for cls in (TokenForged, TokenExpired, TokenReused, TokenWrongPurpose)}
    assert len(codes) == 4 and all(issubclass(c, TokenError) for c in (TokenForged, TokenExpired, TokenReused))


def test_key_rotation(clock) -> None:
    old = tokens(clock).issue(purpose="ack", subject="Task/t1")
    rotated = tokens(clock, keys={"k1": KEY1, "k2": KEY2}, current="k2")
    assert rotated.verify(old, purpose="ack").key_id == "k1"
    assert rotated.verify(rotated.issue(purpose="ack", subject="Task/t1"), purpose="ack").key_id == "k2"
    with pytest.raises(TokenForged, match="unknown key"):
        tokens(clock, keys={"k2": KEY2}, current="k2").verify(old, purpose="ack")


def test_keys_must_be_long_and_are_never_shown(clock) -> None:
    with pytest.raises(ValueError, match="too short"):
        SignedTokens({"k": "short"}, current="k", used=MemoryUsedTokens(), clock=clock)
    assert KEY1.reveal() not in repr(tokens(clock))


def test_single_use_survives_a_restart_in_the_fhir_store(tmp_path: Path, clock) -> None:
    store = SqliteFhirStore(tmp_path / "fhir.db", clock=clock)
    token = tokens(clock, used=FhirUsedTokens(store)).issue(purpose="ack", subject="Task/t1")
    tokens(clock, used=FhirUsedTokens(store)).redeem(token, purpose="ack")
    store.close()
    reopened = SqliteFhirStore(tmp_path / "fhir.db", clock=clock)
    with pytest.raises(TokenReused):
        tokens(clock, used=FhirUsedTokens(reopened)).redeem(token, purpose="ack")
    reopened.close()


def test_single_use_in_the_embedded_ledger(tmp_path: Path, clock) -> None:
    ledger = SqliteSendLedger(tmp_path / "sends.db")
    t = tokens(clock, used=LedgerUsedTokens(ledger))
    token = t.issue(purpose="ack", subject="Task/t1")
    t.redeem(token, purpose="ack")
    with pytest.raises(TokenReused):
        tokens(clock, used=LedgerUsedTokens(SqliteSendLedger(tmp_path / "sends.db"))).redeem(token, purpose="ack")


def test_verify_does_not_spend_so_the_action_can_run_first(clock) -> None:
    t = tokens(clock)
    token = t.issue(purpose="ack", subject="Task/t1")
    claims = t.verify(token, purpose="ack")
    t.verify(token, purpose="ack")
    t.consume(claims)
    with pytest.raises(TokenReused):
        t.consume(claims)


# -- malleability: a token has exactly one spelling ---------------------------------------------

# Issued by the code before canonical decoding (key KEY1, token id bytes 0..8, at 2026-11-20T15:00Z,
# 24 h): links already sent keep working, strictly, for their lifetime.
SENT_BEFORE = "MXxrMXxhY2t8VGFzay90MXxQcmFjdGl0aW9uZXIvbjF8dG91eG8wfEFBRUNBd1FGQmdjSQ.2AEgVmUt40if1nh9d4mloQ"


def _variants(token: str) -> dict[str, str]:
    body, mac = token.split(".")
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # 16 MAC bytes take 22 characters; the last one carries 2 data bits and 4 unused ones, so
    # the next character in the alphabet decodes to the same bytes with a lenient decoder.
    same_bytes = last[last.index(mac[-1]) ^ 1]
    return {
        "mac + '=='": f"{token}==",
        "mac + '='": f"{token}=",
        "body padded": f"{body}==.{mac}",
        "mac upper case": f"{body}.{mac.upper()}" if mac.upper() != mac else f"{body}.{mac.lower()}",
        "token upper case": token.upper(),
        "body swapped case": f"{body.swapcase()}.{mac}",
        "trailing garbage": f"{token}!",
        "trailing space": f"{token} ",
        "trailing newline": f"{token}\n",
        "percent-encoded padding": f"{token}%3D%3D",
        "inner garbage": f"{body}.{mac[:5]}*{mac[5:]}",
        "unused bits set": f"{body}.{mac[:-1]}{same_bytes}",
        "mac one char short": f"{body}.{mac[:-1]}",
        "mac extended": f"{body}.{mac}AAAA",
    }


@pytest.mark.parametrize("variant", sorted(_variants(SENT_BEFORE)))
def test_a_token_spelled_any_other_way_is_refused(clock, variant: str) -> None:
    t = tokens(clock)
    token = t.issue(purpose="ack", subject="Task/t1", actor="Practitioner/n1")
    altered = _variants(token)[variant]
    assert altered != token
    with pytest.raises(TokenForged):
        t.verify(altered, purpose="ack")
    # The genuine token still verifies and is then spent once.
    assert t.redeem(token, purpose="ack").subject == "Task/t1"


def test_a_genuine_token_with_a_swapped_purpose_is_refused(clock) -> None:
    t = tokens(clock)
    with pytest.raises(TokenWrongPurpose):
        t.verify(t.issue(purpose="checkin", subject="Task/t1"), purpose="ack")
    # Rewriting the purpose inside the payload breaks the signature instead.
    body, mac = t.issue(purpose="checkin", subject="Task/t1").split(".")
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).replace(b"|checkin|", b"|ack|")
    forged = base64.urlsafe_b64encode(payload).rstrip(b"=").decode() + "." + mac
    with pytest.raises(TokenForged):
        t.verify(forged, purpose="ack")


def test_a_link_sent_before_stays_valid_for_its_lifetime_and_strict(clock) -> None:
    t = tokens(clock)  # 12:00, three hours before that link was issued
    clock.advance(timedelta(hours=26, minutes=59))  # 2026-11-21T14:59Z: one minute left
    claims = t.verify(SENT_BEFORE, purpose="ack")
    assert (claims.subject, claims.actor, claims.key_id) == ("Task/t1", "Practitioner/n1", "k1")
    for altered in _variants(SENT_BEFORE).values():
        with pytest.raises(TokenForged):
            t.verify(altered, purpose="ack")
    t.redeem(SENT_BEFORE, purpose="ack")
    with pytest.raises(TokenReused):
        t.redeem(SENT_BEFORE, purpose="ack")
    clock.advance(timedelta(minutes=1))
    with pytest.raises(TokenExpired):
        t.verify(SENT_BEFORE, purpose="ack")
