"""Classify a returned message: which recipient bounced or complained, and how badly.

`classify(raw)` turns the bytes of one message that arrived at the bounce address into a
`Report` of `Finding`s; a non-bounce (an auto-reply, a "delivered" notice) gives none.
Evidence, most structured first:
  1. complaints: ARF (RFC 5965, also inline), JMRP, Apple unsubscribe, SES JSON;
  2. RFC 3464 recipient blocks, in a delivery-status part, a mislabelled part or quoted text;
  3. prose bounces: the addresses the report names and the lines about each one.
Whether a finding is hard is decided by `replies.judge` from the status and the server's
words (see findings.judged), never by the class digit. The VERP token
(`bounces+<token>@domain`) is read from the headers, so a bounce is tied to its subscriber
and issue even when the report itself names nobody.
"""

from __future__ import annotations

import re
from dataclasses import replace
from email.message import Message

from newsletter.inbound import complaints, dsn, plaintext
from newsletter.inbound.findings import Finding, Kind, Report, judged
from newsletter.inbound.mimetext import all_values, enclosed, header, parse
from newsletter.replies import RCPT_ONLY, Blame, Stage

__all__ = ["Finding", "Kind", "Report", "classify", "judged", "ses_findings", "verp_token"]
ses_findings = complaints.ses_findings

BOUNCE_FROM = re.compile(r"mailer-daemon|postmaster|mail ?delivery|mailerdaemon|post_master|ndr|mmsc", re.I)
BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|failure|has failed|notification|problem|report)|failure notice|"
    r"returned mail|mail delivery failed|could not be delivered|non[- ]?delivery|failed delivery|"
    r"delivery failed|mail system error|rejected|returned to sender|nicht zustellbar|"
    r"error|warning: message|エラー|未達|配信不能|不達",
    re.I,
)
# An SMTP transcript: commands we sent (">>> RCPT To:<…>") and the replies (“<<< 550 …”).
TRANSCRIPT = re.compile(r"^[ \t]*>>>[ \t]*(?P<sent>rcpt|mail|data|\.)|^[ \t]*<<<[ \t]*[45]\d\d", re.I | re.M)
PIPELINED = re.compile(r"^[ \t]*<<<[ \t]*(?:503\b|5\d\d\b.{0,40}no valid recipients)", re.I | re.M)
COMMANDS = {"RCPT": Stage.RCPT, "MAIL": Stage.MAIL, "DATA": Stage.DATA, ".": Stage.DATA}
STAGE_WORDS = (
    (
        Stage.DATA,
        re.compile(
            r"smtp command:?\s*data\b|did not like our (?:final )?data|"
            r"(?:in reply to|after) (?:the )?(?:end of )?data\b",
            re.I,
        ),
    ),
    (Stage.RCPT, re.compile(r"did not like our rcpt|(?:in reply to|after) (?:the )?rcpt\b", re.I)),
    (Stage.MAIL, re.compile(r"did not like our mail|(?:in reply to|after) (?:the )?mail from\b", re.I)),
)
AUTO_REPLY_SUBJECT = re.compile(
    r"auto(?:matic)?[- ]?(?:reply|response)|out of (?:the )?office|vacation|abwesen|absence|away from", re.I
)


def classify(raw: bytes, *, verp_local: str = "bounces") -> Report:
    """Findings of one raw message. Never raises on odd input: unknown means no finding."""
    msg = parse(raw)
    findings = complaints.complaints(msg) or _bounces(msg)
    return Report(header(msg, "Message-ID").strip(), tuple(findings), verp_token(msg, verp_local))


def verp_token(msg: Message, local: str = "bounces") -> str:
    """The token of `<local>+<token>@…` in the envelope headers, or the enclosed original's."""
    pattern = re.compile(rf"(?<![\w.+-]){re.escape(local)}\+([A-Za-z0-9_.-]+)@", re.I)
    for source in (msg, *enclosed(msg)):
        for name in ("Delivered-To", "X-Original-To", "To", "Envelope-To", "X-Envelope-To", "Return-Path"):
            for value in all_values(source, name):
                match = pattern.search(value)
                if match:
                    return match.group(1).rstrip(".")
    return ""


def _bounces(msg: Message) -> list[Finding]:
    entries = dsn.entries(msg)
    if entries is not None:
        return _from_dsn(msg, entries)
    if not _looks_like_bounce(msg):
        return []
    mentions = plaintext.mentions(msg)
    text = plaintext.report_text(msg)
    failed = plaintext.failed_recipients(msg)
    if failed:  # the MTA's own list outranks addresses read out of prose
        about = {m.recipient: m.about for m in mentions}
        mentions = [plaintext.Mention(r, about.get(r, text)) for r in failed]
    prose = not failed
    if not mentions:
        named = plaintext.original_recipients(msg)
        mentions = [plaintext.Mention(r, text) for r in named[:1]]
    if not mentions:
        # Nobody named: worth keeping (a VERP token may still tie it to a reader) only if it says why.
        anonymous = _judge_mention(plaintext.Mention("", text), text)
        return [anonymous] if anonymous.status or anonymous.blame is not Blame.UNKNOWN else []
    return [replace(_judge_mention(m, text if len(mentions) == 1 else m.about), from_text=prose) for m in mentions]


def _from_dsn(msg: Message, entries: list[dsn.Entry]) -> list[Finding]:
    failed = [e for e in entries if not e.succeeded]
    if not failed:
        return []  # a "delivered" or "relayed" notice
    mentions = {m.recipient: m.about for m in plaintext.mentions(msg)}
    spare = [r for r in mentions if r not in {e.recipient for e in failed}]
    text = plaintext.report_text(msg)
    found = []
    for entry in failed:
        recipient = entry.recipient or (spare.pop(0) if spare else "")
        about = mentions.get(recipient, "")
        # The whole text speaks for a recipient only when it is the only one: another's reason must not leak.
        words = entry.diagnostic or about or (text if len(failed) == 1 else "")
        # The human part often names the stage ("in reply to end of DATA command") the DSN leaves out.
        finding = judged(
            recipient,
            entry.status,
            words,
            stage=_stage(about or text),
            permanent=False if entry.action == "delayed" else None,
        )
        found.append(replace(finding, from_text=not entry.recipient))
    return found


def _stage(text: str) -> Stage:
    """The SMTP command a transcript's first failure answered: the last `>>> COMMAND` before the
    first 4xx/5xx `<<<` reply, or a report's own words for it. Words only ever said at RCPT
    outrank a command a filter's report names (m-FILTER reports DATA for Postfix's RCPT refusal)."""
    if RCPT_ONLY.search(text):
        return Stage.RCPT
    command = ""
    for match in TRANSCRIPT.finditer(text):
        if match.group("sent"):
            command = match.group("sent").upper()
        elif command:
            # Pipelined: RCPT's refusal is read after DATA went out, and DATA then gets "503 need RCPT".
            if command == "DATA" and PIPELINED.search(text, match.end()):
                return Stage.RCPT
            return COMMANDS.get(command, Stage.UNKNOWN)
    for stage, words in STAGE_WORDS:
        if words.search(text):
            return stage
    return Stage.UNKNOWN


def _judge_mention(mention: plaintext.Mention, text: str) -> Finding:
    stage = _stage(mention.about)
    finding = judged(mention.recipient, "", mention.about, stage=stage)
    if finding.blame is Blame.UNKNOWN and mention.about != text:
        finding = judged(mention.recipient, "", f"{mention.about}\n{text}", stage=stage or _stage(text))
    return finding


def _looks_like_bounce(msg: Message) -> bool:
    sender, subject = header(msg, "From"), header(msg, "Subject")
    if msg.get_content_type() == "multipart/report":
        return True
    bouncy = bool(BOUNCE_FROM.search(sender) or BOUNCE_SUBJECT.search(subject))
    if _auto_reply(msg, subject):
        return bouncy and not AUTO_REPLY_SUBJECT.search(subject)
    return bouncy or header(msg, "Return-Path").strip() == "<>"


def _auto_reply(msg: Message, subject: str) -> bool:
    """RFC 3834 auto-replies and vacation notices (many bounces say auto-replied too)."""
    auto = header(msg, "Auto-Submitted").strip().lower()
    return (
        auto.startswith("auto-replied")
        or "X-Autoreply" in msg
        or "X-Autorespond" in msg
        or header(msg, "Precedence").strip().lower() == "auto_reply"
        or bool(AUTO_REPLY_SUBJECT.search(subject))
    )
