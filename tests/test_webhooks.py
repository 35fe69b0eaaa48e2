"""POST /webhooks/bounces/<provider>: real signatures made with real keys, valid and forged."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import hmac
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.testclient import TestClient
from test_bounces_policy import _issues, _mailed
from web_support import uvicorn_in_thread

from newsletter import subscribers, tokens
from newsletter.config import Secret, Settings
from newsletter.errors import ConfigError
from newsletter.inbound import webhooks
from newsletter.models import Bounce, BounceKind, Delivery, Event, EventKind, SubscriberStatus, WebhookNonce, utcnow

TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-bounces"
MAX_AGE_PLUS = webhooks.MAX_SKEW + 60  # seconds: past the accepted window


@dataclasses.dataclass
class Keys:
    sns: rsa.RSAPrivateKey
    sendgrid: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(ec.SECP256R1()))


def _certificate(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.eu-west-1.amazonaws.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def hook_settings(settings: Settings, keys: Keys, tmp_path: Path) -> Settings:
    (tmp_path / "sns.pem").write_bytes(_certificate(keys.sns))
    der = keys.sendgrid.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b = dataclasses.replace(
        settings.bounces,
        ses_certificate="sns.pem",
        ses_topic_arn=TOPIC,
        sendgrid_public_key=base64.b64encode(der).decode(),
        postmark_username="pm",
        postmark_password=Secret("pm-pass"),
        mailgun_signing_key=Secret("mg-key"),
    )
    return dataclasses.replace(settings, bounces=b)


@pytest.fixture
def client(hook_settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    with sessions.begin() as s:
        issues = _issues(s, 1)
        for email in ("gone@example.org", "angry@example.org", "full@example.org"):
            _mailed(s, email, issues)
    with TestClient(Starlette(routes=webhooks.routes(hook_settings, sessions))) as c:
        yield c


def _status(sessions: sessionmaker[Session], email: str) -> SubscriberStatus:
    with sessions.begin() as s:
        return subscribers.get_by_email(s, email).status  # type: ignore[union-attr]


def _sns(keys: Keys, ses: dict, *, version: str = "2", msg_id: str = "sns-1") -> dict:
    msg = {
        "Type": "Notification",
        "MessageId": msg_id,
        "TopicArn": TOPIC,
        "Message": json.dumps(ses),
        "Timestamp": "2026-11-20T10:00:00.000Z",
        "SignatureVersion": version,
        "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem",
    }
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = keys.sns.sign(webhooks.sns_string_to_sign(msg), padding.PKCS1v15(), algorithm)
    msg["Signature"] = base64.b64encode(signature).decode()
    return msg


SES_BOUNCE = {
    "notificationType": "Bounce",
    "bounce": {
        "bounceType": "Permanent",
        "bounceSubType": "General",
        "feedbackId": "fb-1",
        "bouncedRecipients": [
            {"emailAddress": "gone@example.org", "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}
        ],
    },
    "mail": {"messageId": "m-1", "source": "news@example.com"},
}
SES_COMPLAINT = {
    "notificationType": "Complaint",
    "complaint": {
        "feedbackId": "fb-2",
        "complaintFeedbackType": "abuse",
        "complainedRecipients": [{"emailAddress": "angry@example.org"}],
    },
    "mail": {"messageId": "m-2", "source": "news@example.com"},
}


def test_ses_signed_notifications(client: TestClient, keys: Keys, sessions: sessionmaker[Session]) -> None:
    r = client.post("/webhooks/bounces/ses", content=json.dumps(_sns(keys, SES_BOUNCE)))
    assert r.status_code == 200 and r.json() == {"applied": 1, "skipped": 0}
    r = client.post("/webhooks/bounces/ses", content=json.dumps(_sns(keys, SES_COMPLAINT, version="1", msg_id="2")))
    assert r.json() == {"applied": 1, "skipped": 0}
    assert _status(sessions, "gone@example.org") == SubscriberStatus.BOUNCED
    assert _status(sessions, "angry@example.org") == SubscriberStatus.COMPLAINED
    # SNS retries deliver the same notification again: nothing happens twice.
    r = client.post("/webhooks/bounces/ses", content=json.dumps(_sns(keys, SES_BOUNCE, msg_id="retry")))
    assert r.json() == {"applied": 0, "skipped": 1}


def test_ses_forged_or_foreign_is_refused(client: TestClient, keys: Keys, sessions: sessionmaker[Session]) -> None:
    forged = _sns(keys, SES_BOUNCE)
    forged["Message"] = forged["Message"].replace("gone@", "full@")
    assert client.post("/webhooks/bounces/ses", content=json.dumps(forged)).status_code == 403
    other = _sns(Keys(rsa.generate_private_key(public_exponent=65537, key_size=2048), keys.sendgrid), SES_BOUNCE)
    assert client.post("/webhooks/bounces/ses", content=json.dumps(other)).status_code == 403
    assert client.post("/webhooks/bounces/ses", content=b"{not json").status_code == 400
    assert client.post("/webhooks/bounces/nope", content=b"{}").status_code == 404
    assert _status(sessions, "full@example.org") == SubscriberStatus.ACTIVE
    assert _status(sessions, "gone@example.org") == SubscriberStatus.ACTIVE


def test_ses_verp_token_in_mail_source(
    client: TestClient, keys: Keys, sessions: sessionmaker[Session], hook_settings: Settings
) -> None:
    with sessions.begin() as s:
        sid = subscribers.get_by_email(s, "full@example.org").id  # type: ignore[union-attr]
        issue_id = s.scalars(select(Delivery.issue_id).where(Delivery.subscriber_id == sid)).one()
    token = tokens.make(hook_settings.newsletter.secret_key, tokens.BOUNCE, sid, issue_id)
    ses = json.loads(json.dumps(SES_BOUNCE))
    ses["mail"]["source"] = f"bounces+{token}@bounce.example.com"
    ses["bounce"]["bouncedRecipients"][0]["emailAddress"] = "alias-we-never-knew@example.net"
    assert client.post("/webhooks/bounces/ses", content=json.dumps(_sns(keys, ses))).json()["applied"] == 1
    # The token names the reader; the report names another address (a forward): counted, never hard.
    assert _status(sessions, "full@example.org") == SubscriberStatus.ACTIVE
    with sessions.begin() as s:
        assert [tuple(r) for r in s.execute(select(Bounce.subscriber_id, Bounce.kind))] == [(sid, BounceKind.SOFT)]
    ses["bounce"]["feedbackId"] = "fb-own"
    ses["bounce"]["bouncedRecipients"][0]["emailAddress"] = "full@example.org"
    assert client.post("/webhooks/bounces/ses", content=json.dumps(_sns(keys, ses, msg_id="sns-2"))).json() == {
        "applied": 1,
        "skipped": 0,
    }
    assert _status(sessions, "full@example.org") == SubscriberStatus.BOUNCED


def _sendgrid(keys: Keys, events: list[dict], *, age: int = 0) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(events).encode()
    ts = str(int(time.time()) - age)
    sig = keys.sendgrid.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
    return body, {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": ts,
    }


def test_sendgrid_signed_events(client: TestClient, keys: Keys, sessions: sessionmaker[Session]) -> None:
    body, headers = _sendgrid(
        keys,
        [
            {
                "email": "gone@example.org",
                "event": "bounce",
                "type": "bounce",
                "status": "5.1.1",
                "reason": "550 5.1.1 The email account that you tried to reach does not exist",
                "sg_event_id": "e1",
            },
            {"email": "angry@example.org", "event": "spamreport", "sg_event_id": "e2"},
            {"email": "full@example.org", "event": "delivered", "sg_event_id": "e3"},
        ],
    )
    assert client.post("/webhooks/bounces/sendgrid", content=body, headers=headers).json() == {
        "applied": 2,
        "skipped": 0,
    }
    assert _status(sessions, "gone@example.org") == SubscriberStatus.BOUNCED
    assert _status(sessions, "angry@example.org") == SubscriberStatus.COMPLAINED
    tampered = body.replace(b"delivered", b"spamreport")
    assert client.post("/webhooks/bounces/sendgrid", content=tampered, headers=headers).status_code == 403
    assert client.post("/webhooks/bounces/sendgrid", content=body).status_code == 403
    assert _status(sessions, "full@example.org") == SubscriberStatus.ACTIVE


def test_postmark_basic_auth(client: TestClient, sessions: sessionmaker[Session]) -> None:
    bounce = {
        "RecordType": "Bounce",
        "ID": 42,
        "Type": "HardBounce",
        "TypeCode": 1,
        "Email": "gone@example.org",
        "Description": "The server was unable to deliver your message",
        "Details": "550 5.1.1 unknown",
    }
    spam = {"RecordType": "SpamComplaint", "ID": 43, "Type": "SpamComplaint", "Email": "angry@example.org"}
    assert client.post("/webhooks/bounces/postmark", json=bounce, auth=("pm", "wrong")).status_code == 403
    assert client.post("/webhooks/bounces/postmark", json=bounce).status_code == 403
    assert _status(sessions, "gone@example.org") == SubscriberStatus.ACTIVE
    assert client.post("/webhooks/bounces/postmark", json=bounce, auth=("pm", "pm-pass")).json()["applied"] == 1
    assert client.post("/webhooks/bounces/postmark", json=spam, auth=("pm", "pm-pass")).json()["applied"] == 1
    assert _status(sessions, "gone@example.org") == SubscriberStatus.BOUNCED
    assert _status(sessions, "angry@example.org") == SubscriberStatus.COMPLAINED


def _mailgun(key: str, data: dict, token: str = "tok-1", *, age: int = 0) -> dict:
    ts = str(int(time.time()) - age)
    sig = hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": ts, "token": token, "signature": sig}, "event-data": data}


def test_mailgun_hmac(client: TestClient, sessions: sessionmaker[Session]) -> None:
    failed = {
        "id": "mg-1",
        "event": "failed",
        "severity": "temporary",
        "recipient": "full@example.org",
        "delivery-status": {"code": 452, "message": "4.2.2 mailbox full"},
    }
    complained = {"id": "mg-2", "event": "complained", "recipient": "angry@example.org"}
    assert client.post("/webhooks/bounces/mailgun", json=_mailgun("wrong-key", complained)).status_code == 403
    assert _status(sessions, "angry@example.org") == SubscriberStatus.ACTIVE
    assert client.post("/webhooks/bounces/mailgun", json=_mailgun("mg-key", complained)).json()["applied"] == 1
    assert client.post("/webhooks/bounces/mailgun", json=_mailgun("mg-key", failed, "tok-2")).json()["applied"] == 1
    assert _status(sessions, "angry@example.org") == SubscriberStatus.COMPLAINED
    assert _status(sessions, "full@example.org") == SubscriberStatus.ACTIVE  # one soft bounce is only counted
    with sessions.begin() as s:
        assert subscribers.get_by_email(s, "full@example.org").soft_bounces == 1  # type: ignore[union-attr]


def _events(sessions: sessionmaker[Session]) -> list[tuple[EventKind, str]]:
    with sessions.begin() as s:
        return [(e.kind, e.detail) for e in s.scalars(select(Event).order_by(Event.id))]


def _nonces(sessions: sessionmaker[Session]) -> list[str]:
    with sessions.begin() as s:
        return list(s.scalars(select(WebhookNonce.key).order_by(WebhookNonce.key)))


def test_mailgun_replayed_signature_with_forged_event_is_refused(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    """Mailgun signs only timestamp + token: a captured signature must not carry other event-data."""
    delivered = {"id": "mg-9", "event": "delivered", "recipient": "angry@example.org"}
    signed = _mailgun("mg-key", delivered, "tok-9")
    assert client.post("/webhooks/bounces/mailgun", json=signed).json() == {"applied": 0, "skipped": 0}
    before = _events(sessions)
    forged = {**signed, "event-data": {"id": "forged-1", "event": "complained", "recipient": "angry@example.org"}}
    r = client.post("/webhooks/bounces/mailgun", json=forged)
    assert r.status_code == 403 and "already used" in r.json()["error"]
    # The same request twice (a retry or a replay) is refused too; a real complaint with its
    # own token still works afterwards.
    assert client.post("/webhooks/bounces/mailgun", json=signed).status_code == 403
    assert _status(sessions, "angry@example.org") == SubscriberStatus.ACTIVE and _events(sessions) == before
    complained = {"id": "forged-1", "event": "complained", "recipient": "angry@example.org"}
    assert client.post("/webhooks/bounces/mailgun", json=_mailgun("mg-key", complained, "tok-10")).json() == {
        "applied": 1,
        "skipped": 0,
    }
    assert _status(sessions, "angry@example.org") == SubscriberStatus.COMPLAINED


def test_mailgun_dedupes_on_the_signed_token_not_the_event_id(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    """event-data.id is chosen by whoever posts: reusing a real one must not mask a new report."""
    soft = {
        "id": "same-id",
        "event": "failed",
        "severity": "temporary",
        "recipient": "full@example.org",
        "delivery-status": {"code": 452, "message": "4.2.2 mailbox full"},
    }
    complaint = {"id": "same-id", "event": "complained", "recipient": "full@example.org"}
    assert client.post("/webhooks/bounces/mailgun", json=_mailgun("mg-key", soft, "tok-a")).json()["applied"] == 1
    assert client.post("/webhooks/bounces/mailgun", json=_mailgun("mg-key", complaint, "tok-b")).json() == {
        "applied": 1,
        "skipped": 0,
    }
    assert _status(sessions, "full@example.org") == SubscriberStatus.COMPLAINED
    with sessions.begin() as s:
        ids = list(s.scalars(select(Bounce.report_id).order_by(Bounce.id)))
    assert len(ids) == 2 and all(i.startswith("mailgun:tok-") for i in ids)


def test_stale_or_future_signatures_are_refused(
    client: TestClient, keys: Keys, sessions: sessionmaker[Session]
) -> None:
    complained = {"id": "mg-3", "event": "complained", "recipient": "angry@example.org"}
    spam = [{"email": "angry@example.org", "event": "spamreport", "sg_event_id": "e9"}]
    before = _events(sessions)
    for age in (MAX_AGE_PLUS, -MAX_AGE_PLUS):
        r = client.post("/webhooks/bounces/mailgun", json=_mailgun("mg-key", complained, f"tok{age}", age=age))
        assert r.status_code == 403 and "over 300 s" in r.json()["error"]
        body, headers = _sendgrid(keys, spam, age=age)
        r = client.post("/webhooks/bounces/sendgrid", content=body, headers=headers)
        assert r.status_code == 403 and "over 300 s" in r.json()["error"]
    assert _status(sessions, "angry@example.org") == SubscriberStatus.ACTIVE and _events(sessions) == before
    # Within the window (a slow network, a clock a little off) is still accepted.
    assert (
        client.post("/webhooks/bounces/mailgun", json=_mailgun("mg-key", complained, "tok-ok", age=200)).json()[
            "applied"
        ]
        == 1
    )
    assert _status(sessions, "angry@example.org") == SubscriberStatus.COMPLAINED


def test_old_mailgun_tokens_are_forgotten(client: TestClient, sessions: sessionmaker[Session]) -> None:
    """Only tokens whose timestamp could still pass are kept, so the table does not grow."""
    delivered = {"id": "d", "event": "delivered", "recipient": "full@example.org"}
    client.post("/webhooks/bounces/mailgun", json=_mailgun("mg-key", delivered, "tok-old"))
    assert _nonces(sessions) == ["mailgun:tok-old"]
    with sessions.begin() as s:
        s.scalars(select(WebhookNonce)).one().expires_at = utcnow() - datetime.timedelta(seconds=1)
    client.post("/webhooks/bounces/mailgun", json=_mailgun("mg-key", delivered, "tok-new"))
    assert _nonces(sessions) == ["mailgun:tok-new"]


def test_unconfigured_provider_is_refused(settings: Settings, sessions: sessionmaker[Session]) -> None:
    with TestClient(Starlette(routes=webhooks.routes(settings, sessions))) as c:
        for provider in ("ses", "sendgrid", "postmark", "mailgun"):
            r = c.post(f"/webhooks/bounces/{provider}", content=b"{}")
            assert r.status_code == 403 and "not configured" in r.json()["error"], provider


def test_unreadable_key_is_a_config_error(settings: Settings, sessions: sessionmaker[Session]) -> None:
    bad = dataclasses.replace(settings, bounces=dataclasses.replace(settings.bounces, ses_certificate="missing.pem"))
    with pytest.raises(ConfigError, match=r"^\[bounces\] ses_certificate .*missing.pem"):
        webhooks.routes(bad, sessions)


def test_mounted_in_the_web_app(hook_settings: Settings, sessions: sessionmaker[Session]) -> None:
    from newsletter.web import create_app

    with sessions.begin() as s:
        _mailed(s, "gone@example.org", _issues(s, 1))
    bounce = {"RecordType": "Bounce", "ID": 7, "Type": "HardBounce", "Email": "gone@example.org"}
    with TestClient(create_app(hook_settings, sessions)) as c:
        assert c.post("/webhooks/bounces/postmark", json=bounce, auth=("pm", "pm-pass")).json()["applied"] == 1
    assert _status(sessions, "gone@example.org") == SubscriberStatus.BOUNCED


def test_ses_subscription_confirmation_and_foreign_topic(
    client: TestClient, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    confirm = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "c-1",
        "Token": "tok",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe",
        "SubscribeURL": "https://sns.example/confirm?tok",
        "Timestamp": "2026-11-20T10:00:00.000Z",
        "SignatureVersion": "1",
    }
    signature = keys.sns.sign(webhooks.sns_string_to_sign(confirm), padding.PKCS1v15(), hashes.SHA1())
    confirm["Signature"] = base64.b64encode(signature).decode()
    with caplog.at_level("WARNING", logger="newsletter.webhooks"):
        r = client.post("/webhooks/bounces/ses", content=json.dumps(confirm))
    assert r.json() == {"applied": 0, "skipped": 0}
    assert "open https://sns.example/confirm?tok to confirm" in caplog.text
    foreign = _sns(keys, SES_BOUNCE)
    foreign["TopicArn"] = "arn:aws:sns:eu-west-1:999999999999:other"
    signature = keys.sns.sign(webhooks.sns_string_to_sign(foreign), padding.PKCS1v15(), hashes.SHA256())
    foreign["Signature"] = base64.b64encode(signature).decode()
    r = client.post("/webhooks/bounces/ses", content=json.dumps(foreign))
    assert r.status_code == 403 and "ses_topic_arn" in r.json()["error"]


def _first_reply(port: int, request: bytes) -> bytes:
    """Send `request` (headers, maybe part of a body) and read the whole answer, never finishing the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < _length(reply):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply


def _length(reply: bytes) -> int:
    match = re.search(rb"content-length: (\d+)", reply, re.IGNORECASE)
    return int(match.group(1)) if match else 0


def test_webhook_bodies_are_refused_before_they_are_read(
    hook_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Issue 13 item 4: an unauthenticated POST must not make the server hold its body. An oversized
    Content-Length, an unconfigured provider, and a chunked body passing the cap are answered at once,
    while the client is still sending (the old code waited for the whole body, then checked)."""
    small = dataclasses.replace(
        hook_settings, bounces=dataclasses.replace(hook_settings.bounces, max_message_bytes=1000)
    )
    unconfigured = dataclasses.replace(
        small, bounces=dataclasses.replace(small.bounces, mailgun_signing_key=Secret(""))
    )
    head = "POST /webhooks/bounces/mailgun HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    with uvicorn_in_thread(Starlette(routes=webhooks.routes(small, sessions))) as port:
        declared = _first_reply(port, f"{head}Content-Length: 200000000\r\n\r\n{{".encode())
        chunked = _first_reply(port, f"{head}Transfer-Encoding: chunked\r\n\r\n5dc\r\n{'x' * 1500}\r\n".encode())
    with uvicorn_in_thread(Starlette(routes=webhooks.routes(unconfigured, sessions))) as port:
        refused = _first_reply(port, f"{head}Content-Length: 200000000\r\n\r\n{{".encode())
    assert declared.startswith(b"HTTP/1.1 413") and b"larger than 1000 bytes" in declared
    assert chunked.startswith(b"HTTP/1.1 413")
    assert refused.startswith(b"HTTP/1.1 403") and b"mailgun is not configured" in refused


def test_mailgun_non_ascii_signature_is_403_not_500(client: TestClient) -> None:
    """Issue 13 item 7: hmac.compare_digest refuses non-ASCII text, which used to escape as a 500."""
    signed = _mailgun("mg-key", {"id": "x", "event": "complained", "recipient": "angry@example.org"})
    signed["signature"]["signature"] = "é" * 64
    r = client.post("/webhooks/bounces/mailgun", json=signed)
    assert r.status_code == 403 and r.json() == {"error": "Mailgun signature does not match"}
    signed["signature"]["token"] = "tök"
    assert client.post("/webhooks/bounces/mailgun", json=signed).status_code == 403


def test_webhook_answers_carry_the_pages_security_headers(
    hook_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Issue 13 item 7: JSON answers of the webhooks get the same hardening headers as the pages."""
    from newsletter.web import create_app

    with TestClient(create_app(hook_settings, sessions)) as c:
        answers = [
            c.post("/webhooks/bounces/postmark", json={"RecordType": "Open"}, auth=("pm", "pm-pass")),
            c.post("/webhooks/bounces/postmark", json={}, auth=("pm", "wrong")),
            c.post("/webhooks/bounces/nope", content=b"{}"),
        ]
    assert [r.status_code for r in answers] == [200, 403, 404]
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"
        assert "content-security-policy" in r.headers
