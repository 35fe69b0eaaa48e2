"""Link tokens: opaque (no readable id), purpose-bound, tamper-evident, QP-safe."""

from __future__ import annotations

import base64
import re
import secrets

import pytest

from newsletter import tokens
from newsletter.errors import ConfigError, InvalidToken

SECRET = "test-Z2SBMvm9eezoBQE5j6e-u4Dh9PA5k1c0MwALNU23wK4"
OTHER_SECRET = "another-secret-key-entirely-Qw3rTy9uIoP4aSdF6gHjK8lZxCvBnM1"


def test_roundtrip_for_every_purpose() -> None:
    for purpose in tokens.PURPOSES:
        data = tokens.read(SECRET, purpose, tokens.make(SECRET, purpose, 41, 7))
        assert (data.subscriber_id, data.issue_id) == (41, 7)
    assert tokens.read(SECRET, tokens.PREFERENCES, tokens.make(SECRET, tokens.PREFERENCES, 41)).issue_id is None


def test_ids_cannot_be_read_or_guessed_from_a_token() -> None:
    """Neighbouring subscribers get unrelated tokens, and nothing in one decodes to the id."""
    a = tokens.make(SECRET, tokens.UNSUBSCRIBE, 1000, 1)
    b = tokens.make(SECRET, tokens.UNSUBSCRIBE, 1001, 1)
    a_payload, b_payload = a.split(".")[0], b.split(".")[0]
    common = next((i for i, (x, y) in enumerate(zip(a_payload, b_payload, strict=True)) if x != y), len(a_payload))
    assert common < 4
    decoded = base64.urlsafe_b64decode(a_payload + "==")
    assert b"1000" not in decoded and (1000).to_bytes(8, "big") not in decoded


def test_only_quoted_printable_safe_characters() -> None:
    for sid in (0, 1, 2**40):
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", tokens.make(SECRET, tokens.CONFIRM, sid))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],
        lambda t: t[:10],
        lambda t: ("B" if t[0] != "B" else "C") + t[1:],
        lambda t: t.split(".")[0],
        lambda t: "",
    ],
)
def test_changed_tokens_are_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidToken):
        tokens.read(SECRET, tokens.UNSUBSCRIBE, mangle(tokens.make(SECRET, tokens.UNSUBSCRIBE, 5, 1)))


def test_purpose_and_secret_are_bound() -> None:
    token = tokens.make(SECRET, tokens.UNSUBSCRIBE, 5, 1)
    with pytest.raises(InvalidToken):
        tokens.read(SECRET, tokens.PREFERENCES, token)
    with pytest.raises(InvalidToken):
        tokens.read(OTHER_SECRET, tokens.UNSUBSCRIBE, token)


def test_timed_links_expire_by_the_clock_they_are_read_with() -> None:
    """A confirmation link is good for 7 days; an unsubscribe link never expires."""
    issued = 1_800_000_000.0
    confirm = tokens.make(SECRET, tokens.CONFIRM, 5, clock=lambda: issued)
    unsubscribe = tokens.make(SECRET, tokens.UNSUBSCRIBE, 5, 1, clock=lambda: issued)
    six_days, eight_days = issued + 6 * 86400, issued + 8 * 86400
    data = tokens.read(SECRET, tokens.CONFIRM, confirm, clock=lambda: six_days)
    assert data.subscriber_id == 5 and data.issued_at is not None and data.issued_at.timestamp() == issued
    with pytest.raises(InvalidToken, match="expired"):
        tokens.read(SECRET, tokens.CONFIRM, confirm, clock=lambda: eight_days)
    assert tokens.read(SECRET, tokens.UNSUBSCRIBE, unsubscribe, clock=lambda: eight_days * 2).subscriber_id == 5


def test_a_link_dated_in_the_future_is_refused() -> None:
    now = 1_800_000_000.0
    ahead = tokens.make(SECRET, tokens.CSRF, 5, clock=lambda: now + 3600)
    with pytest.raises(InvalidToken):
        tokens.read(SECRET, tokens.CSRF, ahead, clock=lambda: now)


@pytest.mark.parametrize(
    "weak",
    [
        "change-me-to-a-long-random-string",  # the public example
        "x",
        "",  # NEWSLETTER_SECRET_KEY=x
        "0123456789abcdef0123456789abcdef",  # 128 bits of hex (openssl rand -hex 16)
        "test-secret-key-0123456789abcdef",  # 32 characters, not 32 bytes of entropy
        "a" * 100,  # long but one character
    ],
)
def test_a_guessable_secret_key_signs_and_checks_nothing(weak: str) -> None:
    for use in (
        lambda: tokens.make(weak, tokens.UNSUBSCRIBE, 1, 2),
        lambda: tokens.read(weak, tokens.UNSUBSCRIBE, "a.b"),
    ):
        with pytest.raises(ConfigError) as exc:
            use()
        line = str(exc.value)
        assert line.startswith("[newsletter] secret_key is ") and "secrets.token_urlsafe(32)" in line
        assert "\n" not in line and (not weak or weak not in line)


@pytest.mark.parametrize("strong", [secrets.token_urlsafe(32), secrets.token_hex(32), secrets.token_urlsafe(48)])
def test_keys_of_32_random_bytes_are_accepted(strong: str) -> None:
    assert tokens.read(strong, tokens.CONFIRM, tokens.make(strong, tokens.CONFIRM, 5)).subscriber_id == 5


def test_a_minter_makes_the_tokens_make_makes() -> None:
    """The sender's bulk path: the same link, read back to the same ids, for many in a row
    (one cipher context serves them all); timed purposes are refused."""
    unsubscribe = tokens.Minter(SECRET, tokens.UNSUBSCRIBE)
    preferences = tokens.Minter(SECRET, tokens.PREFERENCES)
    for sid in (1, 2, 41, 2**40):
        assert unsubscribe(sid, 7) == tokens.make(SECRET, tokens.UNSUBSCRIBE, sid, 7)
        assert preferences(sid) == tokens.make(SECRET, tokens.PREFERENCES, sid)
        assert tokens.read(SECRET, tokens.UNSUBSCRIBE, unsubscribe(sid, 7)).subscriber_id == sid
    with pytest.raises(ValueError, match="signing time"):
        tokens.Minter(SECRET, tokens.CONFIRM)
    with pytest.raises(ConfigError):
        tokens.Minter("secret", tokens.UNSUBSCRIBE)
