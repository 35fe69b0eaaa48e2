"""What a returned message or a provider's notification says about one recipient.

Hard or soft is never decided here by hand: `judged` asks `replies.judge`, the one function
that reads replies at send time too. Only its hard verdict (a permanent failure that names
the address) makes a Finding hard.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from newsletter.replies import Blame, Stage, judge

MAX_DIAGNOSTIC = 1000


class Kind(enum.StrEnum):
    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"


@dataclass(frozen=True)
class Finding:
    recipient: str  # lower-cased address; "" when the report names nobody
    kind: Kind
    status: str = ""  # enhanced status code like 5.1.1, else an SMTP reply code
    diagnostic: str = ""  # the server's own words, kept in the bounces table
    feedback_type: str = ""  # ARF Feedback-Type (abuse, opt-out …) for complaints
    blame: Blame | None = None  # what the reply blames; None for complaints
    from_text: bool = False  # the recipient was read out of prose, not out of a field that names it


@dataclass(frozen=True)
class Report:
    """One parsed message or notification: its findings, its id and the VERP token it carried."""

    message_id: str
    findings: tuple[Finding, ...]
    token: str = ""


def judged(
    recipient: str,
    status: str,
    text: str,
    *,
    code: int | None = None,
    stage: Stage = Stage.UNKNOWN,
    permanent: bool | None = None,
    provider_says_gone: bool = False,
) -> Finding:
    """A bounce Finding whose kind `replies.judge` decides from the status and the server's words.

    `permanent=False` (a provider's "transient", a DSN's "delayed") is never hard.
    `provider_says_gone` (Postmark's HardBounce, SES's NoEmail) counts as naming the address
    only when the words themselves name nothing else."""
    verdict = judge(code, status, text, stage=stage)
    hard = verdict.hard or (provider_says_gone and verdict.blame in (Blame.ADDRESS, Blame.UNKNOWN))
    if permanent is False:
        hard = False
    return Finding(
        recipient,
        Kind.HARD if hard else Kind.SOFT,
        verdict.status or (str(code) if code else ""),
        " ".join(text.split())[:MAX_DIAGNOSTIC],
        blame=verdict.blame,
    )
