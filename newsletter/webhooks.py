"""`POST /webhooks/bounces/<provider>`: bounce and complaint notifications of email providers.

Each provider proves the request is its own in its own way; a request that fails the
check changes nothing and gets 403, a provider left unconfigured in `[bounces]` too:
  ses       Amazon SNS message signature (RSA, SignatureVersion 1 = SHA1, 2 = SHA256)
            checked against the PEM certificate in `ses_certificate`. The tool never
            downloads SigningCertURL (no network at request time, and a fetched URL is
            an attack surface): save the certificate once, point the setting at it.
  sendgrid  Signed Event Webhook: ECDSA P-256 over timestamp + body, key `sendgrid_public_key`;
            the timestamp must be within MAX_SKEW of our clock.
  postmark  HTTP basic auth from the webhook URL (`postmark_username` / `postmark_password`).
  mailgun   HMAC-SHA256 of timestamp + token under `mailgun_signing_key`. Mailgun does not
            sign event-data, so a signature is good once: the timestamp must be within
            MAX_SKEW and the token is remembered (an Event of kind webhook whose external_id
            is the token) until that window is over; a reused token is a replay.
Notifications become `bounces.Report`s and go through the same policy as returned mail,
deduplicated by a signed id (SNS feedback or message id, SendGrid event id, Mailgun token).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from newsletter.bounce_policy import Policy, Tally, apply_report
from newsletter.bounces import Finding, Kind, Report, ses_findings, severity
from newsletter.config import BouncesSettings, Settings
from newsletter.errors import ConfigError
from newsletter.models import Event, EventKind, utcnow

log = logging.getLogger(__name__)

# How far a signed timestamp may be from our clock, either way (Mailgun and SendGrid).
MAX_SKEW = 300


class Refused(Exception):
    """The request is not authentic (403) or not understood (400)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Notification:
    report_id: str
    report: Report


@dataclass(frozen=True)
class Batch:
    """What one authentic request says; `once` is a signed key a second request may not reuse."""

    notifications: list[Notification] = field(default_factory=list)
    once: str = ""


Parser = Callable[[BouncesSettings, Any, bytes], Batch]


def routes(settings: Settings, session_factory: sessionmaker[Session]) -> list[Route]:
    """The webhook route for `web.create_app`; raises ConfigError if a key file is unreadable."""
    b = settings.bounces
    keys = _Keys.load(settings)
    policy = Policy.from_settings(settings)
    parsers: dict[str, Parser] = {"ses": keys.ses, "sendgrid": keys.sendgrid, "postmark": _postmark,
                                  "mailgun": _mailgun}

    async def endpoint(request: Request) -> JSONResponse:
        provider = request.path_params["provider"]
        parser = parsers.get(provider)
        if parser is None:
            return JSONResponse({"error": f"unknown provider {provider!r}; use one of {', '.join(parsers)}"}, 404)
        body = await request.body()
        if len(body) > policy.max_bytes:
            return JSONResponse({"error": "notification too large"}, 413)
        try:
            batch = parser(b, request.headers, body)
            tally = await run_in_threadpool(_apply, session_factory, policy, provider, batch)
        except Refused as exc:
            log.warning("webhook %s refused: %s", provider, exc)
            return JSONResponse({"error": str(exc)}, exc.status)
        return JSONResponse({"applied": sum(tally.applied.values()), "skipped": sum(tally.skipped.values())})

    return [Route("/webhooks/bounces/{provider}", endpoint, methods=["POST"])]


def _apply(sessions: sessionmaker[Session], policy: Policy, provider: str, batch: Batch) -> Tally:
    tally = Tally()
    with sessions.begin() as session:
        if batch.once:
            _use_once(session, provider, batch.once)
        for n in batch.notifications:
            tally.messages += 1
            apply_report(session, policy, n.report, report_id=n.report_id, source=f"webhook:{provider}",
                         where=f"webhook {provider} {n.report_id}", tally=tally)
    return tally


def _use_once(session: Session, provider: str, key: str) -> None:
    """Remember `key`, or raise Refused(403) if it was used before (in this transaction's commit,
    so two racing requests cannot both pass). Keys older than any timestamp still accepted
    (first use can be up to MAX_SKEW early, then valid for MAX_SKEW more) are forgotten."""
    session.execute(delete(Event).where(Event.kind == EventKind.WEBHOOK,
                                        Event.created_at < utcnow() - timedelta(seconds=3 * MAX_SKEW)))
    session.add(Event(kind=EventKind.WEBHOOK, source=f"webhook:{provider}", detail="one-time signature token",
                      external_id=f"once:{provider}:{key}"[:500]))
    try:
        session.flush()
    except IntegrityError as exc:
        raise Refused(403, f"{provider} signature was already used (a replay); nothing changed") from exc


def _fresh(provider: str, timestamp: str) -> None:
    """Refuse a signed timestamp more than MAX_SKEW seconds from now: an old signature is a replay."""
    try:
        skew = time.time() - int(timestamp)
    except ValueError as exc:
        raise Refused(403, f"{provider} timestamp {timestamp[:20]!r} is not a Unix time") from exc
    if abs(skew) > MAX_SKEW:
        raise Refused(403, f"{provider} timestamp is {abs(skew):.0f} s {'old' if skew > 0 else 'ahead'}, over "
                           f"{MAX_SKEW} s (a replay, or this host's clock is wrong: check NTP)")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise Refused(400, f"body is not JSON ({exc})") from exc


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Refused(403, f"{what} is not base64") from exc


# --- Amazon SES through SNS, and SendGrid: public-key signatures ----------------------

@dataclass(frozen=True)
class _Keys:
    sns_key: rsa.RSAPublicKey | None
    sendgrid_key: ec.EllipticCurvePublicKey | None

    @classmethod
    def load(cls, settings: Settings) -> _Keys:
        b = settings.bounces
        sns_key = None
        if b.ses_certificate:
            path = settings.resolve(b.ses_certificate)
            try:
                key = x509.load_pem_x509_certificate(path.read_bytes()).public_key()
            except (OSError, ValueError) as exc:
                raise ConfigError(f"[bounces] ses_certificate {str(path)!r} is not a readable PEM certificate "
                                  f"({exc}); save the SNS SigningCertURL certificate there") from exc
            if not isinstance(key, rsa.RSAPublicKey):
                raise ConfigError(f"[bounces] ses_certificate {str(path)!r} has no RSA key; use the SNS certificate")
            sns_key = key
        sendgrid_key = None
        if b.sendgrid_public_key:
            text = b.sendgrid_public_key.strip()
            try:
                loaded = (serialization.load_pem_public_key(text.encode()) if text.startswith("-----")
                          else serialization.load_der_public_key(base64.b64decode(text)))
            except (ValueError, binascii.Error) as exc:
                raise ConfigError(f"[bounces] sendgrid_public_key is not a public key ({exc}); copy the "
                                  f"verification key from SendGrid's Signed Event Webhook settings") from exc
            if not isinstance(loaded, ec.EllipticCurvePublicKey):
                raise ConfigError("[bounces] sendgrid_public_key is not an ECDSA key; copy SendGrid's verification key")
            sendgrid_key = loaded
        return cls(sns_key, sendgrid_key)

    def ses(self, b: BouncesSettings, headers: Any, body: bytes) -> Batch:
        if self.sns_key is None:
            raise Refused(403, "ses is not configured: set [bounces] ses_certificate")
        msg = _json(body)
        if not isinstance(msg, dict):
            raise Refused(400, "not an SNS message")
        _verify_sns(self.sns_key, msg)
        if b.ses_topic_arn and msg.get("TopicArn") != b.ses_topic_arn:
            raise Refused(403, f"topic {msg.get('TopicArn')!r} is not [bounces] ses_topic_arn")
        if msg.get("Type") == "SubscriptionConfirmation":
            # Confirming means opening SubscribeURL; this tool fetches nothing, so a person does it.
            log.warning("SNS subscription to %s: open %s to confirm it", msg.get("TopicArn"), msg.get("SubscribeURL"))
            return Batch()
        if msg.get("Type") != "Notification":
            return Batch()
        try:
            ses = json.loads(msg.get("Message") or "")
        except ValueError as exc:
            raise Refused(400, "SNS Message is not an SES notification") from exc
        if not isinstance(ses, dict):
            raise Refused(400, "SNS Message is not an SES notification")
        detail = ses.get("bounce") or ses.get("complaint") or {}
        report_id = f"ses:{detail.get('feedbackId') or msg.get('MessageId')}"
        source = str((ses.get("mail") or {}).get("source") or "")
        token = m.group(1) if (m := re.search(rf"{re.escape(b.return_path_local)}\+([\w.-]+)@", source)) else ""
        return Batch([Notification(report_id, Report(report_id, tuple(ses_findings(ses)), token))])

    def sendgrid(self, b: BouncesSettings, headers: Any, body: bytes) -> Batch:
        if self.sendgrid_key is None:
            raise Refused(403, "sendgrid is not configured: set [bounces] sendgrid_public_key")
        signature = headers.get("x-twilio-email-event-webhook-signature", "")
        timestamp = headers.get("x-twilio-email-event-webhook-timestamp", "")
        try:
            self.sendgrid_key.verify(_b64(signature, "signature"), timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise Refused(403, "SendGrid signature does not match") from exc
        _fresh("SendGrid", timestamp)  # a replay within the window only repeats signed event ids
        events = _json(body)
        if not isinstance(events, list):
            raise Refused(400, "SendGrid posts a JSON array of events")
        return Batch([n for e in events if isinstance(e, dict) and (n := _sendgrid_event(e))])


SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}


def sns_string_to_sign(msg: dict[str, Any]) -> bytes:
    """The canonical text SNS signs: "Name\\nvalue\\n" for each present field, in this order."""
    names = SNS_FIELDS.get(str(msg.get("Type")), ())
    return "".join(f"{n}\n{msg[n]}\n" for n in names if msg.get(n) is not None).encode()


def _verify_sns(key: rsa.RSAPublicKey, msg: dict[str, Any]) -> None:
    algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(str(msg.get("SignatureVersion")))
    if algorithm is None or msg.get("Type") not in SNS_FIELDS:
        raise Refused(403, "unknown SNS SignatureVersion or Type")
    try:
        key.verify(_b64(str(msg.get("Signature", "")), "Signature"), sns_string_to_sign(msg),
                   padding.PKCS1v15(), algorithm)
    except InvalidSignature as exc:
        raise Refused(403, "SNS signature does not match [bounces] ses_certificate") from exc


def _sendgrid_event(e: dict[str, Any]) -> Notification | None:
    event = str(e.get("event", ""))
    email = str(e.get("email", ""))
    status, reason = str(e.get("status", "")), str(e.get("reason", ""))
    if event == "spamreport":
        finding = Finding(email.lower(), Kind.COMPLAINT, feedback_type="abuse", diagnostic="SendGrid spam report")
    elif event in ("unsubscribe", "group_unsubscribe"):
        finding = Finding(email.lower(), Kind.COMPLAINT, feedback_type="opt-out", diagnostic=f"SendGrid {event}")
    elif event == "bounce":
        kind = Kind.SOFT if e.get("type") == "blocked" else severity(status, reason)
        finding = Finding(email.lower(), kind, status, reason[:1000])
    else:
        return None  # delivered, deferred, dropped, opens …: not ours to act on
    report_id = f"sendgrid:{e.get('sg_event_id') or hashlib.sha256(json.dumps(e, sort_keys=True).encode()).hexdigest()}"
    return Notification(report_id, Report(report_id, (finding,)))


# --- Postmark and Mailgun: shared secrets ---------------------------------------------

def _postmark(b: BouncesSettings, headers: Any, body: bytes) -> Batch:
    if not (b.postmark_username and b.postmark_password):
        raise Refused(403, "postmark is not configured: set [bounces] postmark_username and postmark_password")
    scheme, _, encoded = headers.get("authorization", "").partition(" ")
    expected = f"{b.postmark_username}:{b.postmark_password}".encode()
    given = _b64(encoded, "Authorization") if scheme.lower() == "basic" else b""
    if not hmac.compare_digest(given, expected):
        raise Refused(403, "Postmark basic auth does not match")
    record = _json(body)
    if not isinstance(record, dict):
        raise Refused(400, "Postmark posts one JSON object")
    rtype, btype = str(record.get("RecordType", "")), str(record.get("Type", ""))
    email = str(record.get("Email", "")).lower()
    description = f"{btype}: {record.get('Description', '')} {record.get('Details', '')}".strip()
    if rtype == "SpamComplaint" or btype == "SpamComplaint":
        finding = Finding(email, Kind.COMPLAINT, feedback_type="abuse", diagnostic=description[:1000])
    elif rtype == "Bounce":
        kind = Kind.HARD if btype in ("HardBounce", "BadEmailAddress") else Kind.SOFT
        finding = Finding(email, kind, str(record.get("TypeCode", "")), description[:1000])
    else:
        return Batch()
    report_id = f"postmark:{record.get('ID') or hashlib.sha256(body).hexdigest()}"
    return Batch([Notification(report_id, Report(report_id, (finding,)))])


def _mailgun(b: BouncesSettings, headers: Any, body: bytes) -> Batch:
    if not b.mailgun_signing_key:
        raise Refused(403, "mailgun is not configured: set [bounces] mailgun_signing_key")
    payload = _json(body)
    sig = payload.get("signature") if isinstance(payload, dict) else None
    if not isinstance(sig, dict):
        raise Refused(403, "Mailgun signature missing")
    timestamp, token = str(sig.get("timestamp", "")), str(sig.get("token", ""))
    expected = hmac.new(b.mailgun_signing_key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(sig.get("signature", ""))) or not token:
        raise Refused(403, "Mailgun signature does not match")
    _fresh("Mailgun", timestamp)
    data = payload.get("event-data")
    if not isinstance(data, dict):
        raise Refused(400, "Mailgun event-data missing")
    event, email = str(data.get("event", "")), str(data.get("recipient", "")).lower()
    status = data.get("delivery-status") or {}
    code = str(status.get("enhanced-code") or status.get("code") or "")
    text = f"{status.get('message', '')} {status.get('description', '')}".strip()
    if event == "complained":
        finding = Finding(email, Kind.COMPLAINT, feedback_type="abuse", diagnostic="Mailgun complaint")
    elif event == "unsubscribed":
        finding = Finding(email, Kind.COMPLAINT, feedback_type="opt-out", diagnostic="Mailgun unsubscribe")
    elif event == "failed":
        kind = severity(code, text) if data.get("severity") == "permanent" else Kind.SOFT
        finding = Finding(email, kind, code, text[:1000])
    else:
        return Batch(once=token)  # remembered even so: its signature must not carry a forged event later
    # event-data (its id too) is unsigned: only the token identifies this report.
    report_id = f"mailgun:{token}"
    return Batch([Notification(report_id, Report(report_id, (finding,)))], once=token)
