"""What an SMTP reply or a delivery report blames: the address, the mailbox, the message, or us.

One function, `judge`, decides for both places a reply reaches us: the sender reading a
RCPT/DATA reply at send time, and the inbound classifier reading a bounce later (its
Status and Diagnostic-Code). Only `Blame.ADDRESS` with a permanent failure is evidence
that the reader is gone; everything else is a reason to retry, slow down, stop, or count
a soft bounce. The class digit alone never decides: a 5xx that says "filtered" or
"blocked using zen.spamhaus.org" is about the message or about us, not about the reader.

Order of evidence: explicit wording first (the receiver's own words are the most specific
thing it told us), then the enhanced status code (RFC 3463), then the bare reply code.
Within the wording, a phrase that names *our* side (sender address, client host, IP)
outranks one that names the recipient, because a blocklist refusal often also mentions
the recipient's address.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Blame(enum.StrEnum):
    ADDRESS = "address"  # no such user or domain, mailbox disabled or moved, null MX
    MAILBOX = "mailbox"  # full, over quota, busy, suspended
    CONTENT = "content"  # spam, virus or content filter judged the message
    MESSAGE = "message"  # our message is malformed: line too long, too big, syntax
    SENDER = "sender"  # blames us: blocklist, reputation, SPF/DKIM/DMARC, policy, relaying
    THROTTLE = "throttle"  # asks us to slow down
    GREYLIST = "greylist"  # try this recipient again later
    TEMPORARY = "temporary"  # any other temporary failure
    UNKNOWN = "unknown"  # permanent, but says nothing we recognise


class Stage(enum.StrEnum):
    """Which SMTP command the reply answered, when known."""

    UNKNOWN = ""
    CONNECT = "connect"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


@dataclass(frozen=True)
class Verdict:
    blame: Blame
    permanent: bool  # 5xx / 5.x.x; a report with no code at all counts as permanent
    status: str = ""  # the enhanced status code found ("5.1.1"), else ""
    hard: bool = False  # evidence that names the address as dead: the only verdict that suppresses


def _words(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(patterns), re.IGNORECASE)


# Our own sender address or domain was refused: never the reader's fault.
_SENDER_ADDRESS = _words(
    r"sender (?:address|domain) (?:rejected|refused|not|does not|is not)",
    r"\bmail from\b.{0,40}(?:rejected|refused|not allowed)",
    r"sender (?:verify|verification) failed",
    r"(?:envelope )?sender (?:is )?(?:not|un)(?:allowed|authori[sz]ed|authenticated|verified)",
    r"from address (?:is )?not (?:verified|allowed|a confirmed)",
    r"sender signature",
    r"sender (?:address|domain) has (?:a )?null mx",
    r"email address is not verified",
    r"(?:unroutable|unknown|invalid|bad|unverified) sender|sender rejected",
)
_STAGE_WORDS = (
    (Stage.DATA, _words(r"(?:in reply to|after) (?:the )?end of data", r"(?:in reply to|after) (?:the )?data\b")),
    (
        Stage.RCPT,
        _words(
            r"(?:in reply to|after) (?:the )?rcpt(?: to)?\b",
            r"\brcpt to:?\s*<[^>]*>\s*[:,]?\s*[45]\d\d",
            r"\bsmtp:rcpt\b|\[rcpt_?to\]",  # Exchange's "Technical details: SMTP:RCPT", Yahoo's "[RCPT_TO]"
        ),
    ),
    (Stage.MAIL, _words(r"(?:in reply to|after) (?:the )?mail(?: from)?\b")),
)

# Words only ever said in reply to RCPT, whatever stage a report names: Postfix's recipient
# restrictions ("<a@b>: Recipient address rejected: …") and qmail's "does not like recipient".
# They name the stage only when it is not known: at send time the sender knows it for sure.
RCPT_ONLY = _words(r"recipient address rejected", r"does not like recipient")

_GREYLIST = _words(r"grey-?list", r"gray-?list", r"greylisting in action", r"try again in \d+ (?:sec|min)")
_THROTTLE = _words(
    r"rate.?limit",
    r"too many (?:connections|concurrent|sessions|messages|mails|emails|requests)",
    r"throttl",
    r"unusual rate",
    r"temporarily deferred due to unexpected volume",
    r"\[ts0\d\]",
    r"server busy",
    r"sending rate exceeded",
    r"exceeded (?:the )?(?:maximum )?(?:connection|message|sending) rate",
    r"limits? for how many messages",
    r"slow down",
    r"too fast",
    r"try (?:again )?later.{0,40}(?:connections?|volume|rate)",
    r"excessive unknown recipients",
)
_BLOCKLIST = _words(
    r"block ?list",
    r"black ?list",
    r"blocked using",
    r"\blisted (?:at|in|on|by)\b",
    r"spamhaus|spamcop|barracuda|sorbs|uceprotect|\bsurbl\b|\bdnsbl\b|\brbl\b|\bcbl\b",
    r"reputation",
    r"client host (?:\[[^]]*\] )?(?:rejected|blocked)",
    r"(?:connection|ip|host|network) (?:address )?(?:is )?(?:blocked|banned|refused|rejected|not accepted)",
    r"banned sending ip",
    r"traffic not accepted",
    r"part of their network is on our block",
    r"\bpoor (?:ip )?reputation",
    r"\bspf\b|\bdkim\b|\bdmarc\b|unauthenticated|not authenticated|authentication (?:required|failed)",
    r"reverse (?:dns|lookup)|\bptr\b|rdns|hostname (?:does not|doesn't) resolve",
    r"relay(?:ing)? (?:access )?(?:denied|not (?:permitted|allowed))|not permitted to relay|unable to relay",
    r"(?:denied|rejected|refused|not accepted) (?:for|by|due to) (?:local |our )?polic",
    r"polic(?:y|ies) (?:reasons|violation|restriction)",
    r"transaction failed",
    r"permanently deferred",
    r"quota exceeded for (?:the )?(?:sender|domain|account)|daily (?:message|sending) quota",
    r"tls (?:is )?required|must issue a starttls",
    r"\bhelo\b|\behlo\b",  # our greeting name refused ("Helo command rejected: Host not found")
    r"not allowed to send",
    r"\bcredits? exceeded|maximum credits",
)
_NO_DOMAIN = _words(
    r"host (?:or domain name )?(?:not found|unknown)|unknown host|domain (?:not found|does not exist|unknown)",
    r"no such domain|\bhost [\w.-]+\.[a-z]{2,} not found|illegal (?:host|domain)",
    r"name or service not known|nxdomain|no (?:valid )?mx (?:record|host)|null mx|does not accept mail",
    r"indicated no smtp service|not accepting network messages|domain is not reachable",
    r"unrouteable|unroutable",
)
_DNS_TRY_AGAIN = _words(r"try again", r"temporar(?:y|ily)", r"timed? ?out", r"servfail", r"no route to")
_NO_USER = _words(
    r"user unknown|unknown user|unknown (?:recipient|local[- ]?part|address|mailbox|account)",
    r"no such (?:user|mailbox|recipient|address|account|person|local user)",
    r"(?:user|recipient|address|mailbox|account|addressee)(?: name)? (?:does not|doesn'?t|did not) exist",
    r"(?:user|recipient|address|mailbox|account|addressee) (?:was |is )?not (?:found|known|listed|valid)",
    r"(?:recipient|address|mailbox|user|account) (?:is )?(?:invalid|unknown|inactive or)",
    r"(?:recipient|address|mailbox|user|account) (?:is )?no longer (?:valid|available|exists)",
    r"invalid (?:recipient|mailbox|address|user)",
    r"recip(?:ient)?notfound",
    r"recipient address rejected(?:\.|\s*$)",  # Postfix's refusal with no reason given
    r"address (?:couldn'?t|could not|cannot|can'?t) be found",
    r"not a valid (?:mailbox|recipient|user)",
    r"mailbox (?:not found|unavailable|does not exist|name not allowed)",
    r"no mailbox here",
    r"doesn'?t have an? [\w.-]+ account",
    r"(?:mailbox|account|address) (?:is |has been )?(?:closed|terminated)",
    r"(?:mailbox|account|address) (?:is |has been )?(?:removed|deleted|discontinued)",
    r"(?:mailbox|account|address|user) (?:has )?moved",
    r"invalid (?:final delivery )?userid",
    r"recipient address rejected: access denied",
    r"name is not recognized|no longer on server|not our customer|inactive email address",
    r"\bdoes not exist\b|\bdoesn'?t exist\b",
)
# A quoted reply that names an address ("550 <a@b>: User unknown"), unlike "550 : User unknown",
# which Japanese carriers (au, docomo) answer for a reader's own filter settings.
_NAMED_ADDRESS = re.compile(r"[^\s<>@:;,()\[\]\"']+@[a-z0-9-]+(?:\.[a-z0-9-]+)+", re.IGNORECASE)
_MAILBOX = _words(
    r"mailbox (?:is )?full|mail ?box full|over ?quota|quota (?:exceeded|full)|exceed(?:s|ed)? (?:its |the )?quota",
    r"insufficient (?:disk |storage )?(?:space|storage)|out of (?:disk )?space|storage (?:full|limit)",
    r"mailbox (?:is )?(?:busy|locked|temporarily)",
    r"receiving mail (?:too quickly|at a rate)",
    # A disabled or inactive account is a suspension its owner can lift (Gmail's 5.2.1): soft,
    # and the soft-bounce window still ends the mailing if it lasts.
    r"suspend|(?:mailbox|account|address) (?:is |has been )?(?:disabled|deactivated|inactive\b)",
    r"account that you tried to reach is (?:disabled|inactive)",
    r"too many messages (?:in|for) (?:this|the) mailbox",
    r"procmail|maildrop|couldn'?t create|can'?t create|cannot create",  # the local delivery agent failed
)
_MESSAGE = _words(
    r"line (?:is )?too long",
    r"message (?:is )?too (?:big|large)|(?:message|mail) size|size limit",
    r"exceeds? (?:the )?(?:maximum )?(?:message )?size",
    r"message length exceeds",
    r"syntax error|unrecognized command|command not recognized|bad sequence",
    r"header (?:line )?(?:too long|syntax|error|is invalid)|malformed|not (?:rfc|compliant)",
    r"8-?bit|bare (?:lf|cr)|\bsmtputf8\b",
    r"too many recipients",
)
_CONTENT = _words(
    r"\bspam\b|junk|unsolicited|bulk mail",
    r"virus|malware|phish|infected",
    r"content (?:rejected|filter|policy)",
    r"(?:message|mail) (?:content )?(?:was |has been )?(?:rejected|blocked|filtered)",
    r"filtered|filter|blocked by",
    r"security (?:issue|policy)",
    r"suspicious",
    r"recipient(?:'s)? (?:preferences|settings|filter)",
)

# RFC 3463 subject.detail -> blame, for when the wording says nothing we recognise.
_BY_STATUS = {
    "1.0": Blame.ADDRESS,
    "1.1": Blame.ADDRESS,
    "1.2": Blame.ADDRESS,
    "1.3": Blame.ADDRESS,
    "1.6": Blame.ADDRESS,
    "1.10": Blame.ADDRESS,
    "4.4": Blame.ADDRESS,
    "1.7": Blame.SENDER,
    "1.8": Blame.SENDER,
    "2.0": Blame.MAILBOX,
    "2.1": Blame.ADDRESS,
    "2.2": Blame.MAILBOX,
    "2.3": Blame.MESSAGE,
    "3.4": Blame.MESSAGE,
    "3.3": Blame.MESSAGE,
    "5.2": Blame.MESSAGE,
    "5.3": Blame.MESSAGE,
    "5.4": Blame.MESSAGE,
    "5.6": Blame.MESSAGE,
    "6.0": Blame.CONTENT,
    "6.1": Blame.MESSAGE,
    "7.0": Blame.SENDER,
    "7.1": Blame.SENDER,
    "7.2": Blame.SENDER,
    "7.7": Blame.SENDER,
    "7.8": Blame.SENDER,
    "7.9": Blame.SENDER,
    "7.23": Blame.SENDER,
    "7.24": Blame.SENDER,
    "7.25": Blame.SENDER,
    "7.26": Blame.SENDER,
    "7.27": Blame.SENDER,
    "7.28": Blame.THROTTLE,
}

_POLICY_CODE = re.compile(r"(?<![\d.])5\.7\.\d{1,3}(?![\d.])")
ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
REPLY_CODE = re.compile(r"(?<![\d.-])([45][0-5]\d)(?=[ :,-]|$)", re.MULTILINE)


def judge(code: int | None, status: str, text: str, *, stage: Stage = Stage.UNKNOWN) -> Verdict:
    """Decide what one reply blames. `code` is the SMTP reply code if known, `status` the
    enhanced code (RFC 3463) if known, `text` the server's words; missing or generic (X.0.0)
    codes are read from the text, and so is the stage when a transcript names it.

    Hard needs a permanent failure whose wording or code says "no such address". "User
    unknown" at the end of DATA is not that: RCPT had accepted the address, so it is a
    content filter talking, and it stays soft."""
    status = status.strip()
    if not ENHANCED.fullmatch(status) or status.endswith(".0.0"):
        found = ENHANCED.search(text)
        status = found.group(0) if found else status if ENHANCED.fullmatch(status) else ""
    if code is None:
        reply = REPLY_CODE.search(text)
        code = int(reply.group(1)) if reply else None
    permanent = status.startswith("5") if status[:1] in ("4", "5") else code is None or code >= 500
    if stage is Stage.UNKNOWN:
        rcpt = RCPT_ONLY.search(text)
        stage = Stage.RCPT if rcpt else next((s for s, words in _STAGE_WORDS if words.search(text)), Stage.UNKNOWN)
    blame = _blame(code, status, text, permanent)
    if blame is Blame.ADDRESS and stage is Stage.DATA:
        blame = Blame.CONTENT
    if blame is Blame.ADDRESS and stage is Stage.MAIL:  # MAIL FROM names our sender, never the reader
        blame = Blame.SENDER
    hard = permanent and blame is Blame.ADDRESS and _names_the_address(status, text, stage)
    return Verdict(blame, permanent, status, hard)


def _names_the_address(status: str, text: str, stage: Stage) -> bool:
    """Whether "no such user" evidence is pinned on this address rather than said by a filter.

    Pinned: a refusal at RCPT; an addressing status (X.1.x: bad mailbox, bad domain, moved, null
    MX) or X.4.4 (unroutable); a domain that does not exist. Under any other specific status
    (5.2.1 mailbox disabled, 5.3.0 system) the words alone are a filter's or a suspension's, and
    stay soft. With no specific status: the reporting MTA's own verdict (it quotes no reply), or
    a quoted reply that names an address."""
    if stage is Stage.RCPT:
        return True
    detail = status.split(".", 1)[1] if status else ""
    if detail.startswith("1.") or detail == "4.4":
        return True
    if _NO_DOMAIN.search(text):
        return True
    if detail not in ("", "0.0"):
        return False
    reply = REPLY_CODE.search(text)
    if reply is None:
        return True
    line_end = text.find("\n", reply.end())
    return _NAMED_ADDRESS.search(text, reply.end(), line_end if line_end >= 0 else len(text)) is not None


def _blame(code: int | None, status: str, text: str, permanent: bool) -> Blame:
    detail = status.split(".", 1)[1] if status else ""
    if _SENDER_ADDRESS.search(text) or detail in ("1.7", "1.8"):
        return Blame.SENDER
    if not permanent and _GREYLIST.search(text):
        return Blame.GREYLIST
    if _THROTTLE.search(text):
        return Blame.THROTTLE
    if _BLOCKLIST.search(text):
        return Blame.SENDER
    if not permanent and (code == 421 or (code == 454 and detail == "7.0")):
        return Blame.THROTTLE
    if _MESSAGE.search(text):
        return Blame.MESSAGE
    if _MAILBOX.search(text):  # before ADDRESS: "unknown address error ... mailbox full" is ambiguous, so soft
        return Blame.MAILBOX
    if _NO_DOMAIN.search(text):
        # A lookup that may succeed later ("Host not found, try again") is not a dead domain; nor
        # is a domain refusal under a policy code, unless it is null MX's own (RFC 7505).
        if _DNS_TRY_AGAIN.search(text):
            return Blame.TEMPORARY
        return Blame.UNKNOWN if detail.startswith("7.") and detail != "7.27" else Blame.ADDRESS
    if _NO_USER.search(text):
        # "User unknown" under a security or policy code (550 5.7.1, also one quoted inside the
        # text): evidence that disagrees with itself never names the address.
        return Blame.UNKNOWN if detail.startswith("7.") or _POLICY_CODE.search(text) else Blame.ADDRESS
    if _CONTENT.search(text):
        return Blame.CONTENT
    by_status = _BY_STATUS.get(detail)
    if by_status is not None:
        return by_status
    if code is not None and 500 <= code <= 504:
        return Blame.MESSAGE
    return Blame.UNKNOWN if permanent else Blame.TEMPORARY
