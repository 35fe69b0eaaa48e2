"""Amazon SES notifications delivered by SNS, signed with RSA (SignatureVersion 1 = SHA1,
2 = SHA256) and checked against the PEM certificate in `[bounces] ses_certificate`.

The tool never downloads SigningCertURL (no network at request time, and a fetched URL is
an attack surface): save the certificate once, point the setting at it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from newsletter.config import BouncesSettings, Settings
from newsletter.errors import ConfigError
from newsletter.inbound.classify import Report, ses_findings
from newsletter.inbound.webhooks.notifications import Batch, Notification, Parser, Refused, b64, parse_json

log = logging.getLogger(__name__)

SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}


def parser(settings: Settings) -> Parser | None:
    """The SES check, or None when `ses_certificate` is unset; raises ConfigError if it is unreadable."""
    b = settings.bounces
    if not b.ses_certificate:
        return None
    path = settings.resolve(b.ses_certificate)
    try:
        key = x509.load_pem_x509_certificate(path.read_bytes()).public_key()
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"[bounces] ses_certificate {str(path)!r} is not a readable PEM certificate "
            f"({exc}); save the SNS SigningCertURL certificate there"
        ) from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(f"[bounces] ses_certificate {str(path)!r} has no RSA key; use the SNS certificate")
    return lambda headers, body: _parse(key, b, body)


def _parse(key: rsa.RSAPublicKey, b: BouncesSettings, body: bytes) -> Batch:
    msg = parse_json(body)
    if not isinstance(msg, dict):
        raise Refused(400, "not an SNS message")
    _verify(key, msg)
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


def sns_string_to_sign(msg: Mapping[str, Any]) -> bytes:
    """The canonical text SNS signs: "Name\\nvalue\\n" for each present field, in this order."""
    names = SNS_FIELDS.get(str(msg.get("Type")), ())
    return "".join(f"{n}\n{msg[n]}\n" for n in names if msg.get(n) is not None).encode()


def _verify(key: rsa.RSAPublicKey, msg: Mapping[str, Any]) -> None:
    algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(str(msg.get("SignatureVersion")))
    if algorithm is None or msg.get("Type") not in SNS_FIELDS:
        raise Refused(403, "unknown SNS SignatureVersion or Type")
    try:
        key.verify(
            b64(str(msg.get("Signature", "")), "Signature"), sns_string_to_sign(msg), padding.PKCS1v15(), algorithm
        )
    except InvalidSignature as exc:
        raise Refused(403, "SNS signature does not match [bounces] ses_certificate") from exc
