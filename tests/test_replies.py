"""What a reply blames, on the published wordings of real receivers and relays.

Each row is a reply a newsletter meets in the wild; the blame decides whether a reader is
suppressed, retried, or whether the run slows down or stops. Only ADDRESS + permanent
suppresses, so the rows that must NOT suppress matter as much as the ones that must.
"""

from __future__ import annotations

import pytest

from newsletter.replies import Blame, Stage, judge

CASES = [
    # The address is gone: the only evidence that suppresses.
    (550, "", "5.1.1 The email account that you tried to reach does not exist.", Blame.ADDRESS),
    (
        550,
        "",
        "5.1.1 <bob@example.org>: Recipient address rejected: User unknown in virtual mailbox table",
        Blame.ADDRESS,
    ),
    (550, "", "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", Blame.ADDRESS),
    (554, "", "delivery error: dd This user doesn't have a yahoo.com account (bob@yahoo.com) [0]", Blame.ADDRESS),
    (None, "", "Sorry, no mailbox here by that name. (#5.1.1)", Blame.ADDRESS),
    (556, "5.1.10", "Recipient address has null MX", Blame.ADDRESS),
    (None, "5.4.4", "Host or domain name not found. Name service error for name=nx.example", Blame.ADDRESS),
    # The mailbox is full or busy: soft.
    (552, "5.2.2", "The email account that you tried to reach is over quota.", Blame.MAILBOX),
    (452, "4.2.2", "Mailbox full", Blame.MAILBOX),
    (450, "4.2.1", "The user you are trying to contact is receiving mail too quickly.", Blame.MAILBOX),
    # A disabled or inactive account is a suspension its owner can lift: soft, counted by the window.
    (550, "5.2.1", "The email account that you tried to reach is disabled.", Blame.MAILBOX),
    (550, "5.2.1", "The email account that you tried to reach is inactive.", Blame.MAILBOX),
    # Greylisting: retry that recipient, never slow the run.
    (451, "4.7.1", "Greylisted, try again later", Blame.GREYLIST),
    (
        450,
        "4.2.0",
        "<bob@example.org>: Recipient address rejected: Greylisted, see http://postgrey.example/",
        Blame.GREYLIST,
    ),
    # Slow down.
    (
        421,
        "4.7.0",
        "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints",
        Blame.THROTTLE,
    ),
    (
        421,
        "4.7.0",
        (
            "Our system has detected an unusual rate of unsolicited mail originating from your IP "
            "address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited."
        ),
        Blame.THROTTLE,
    ),
    (451, "4.7.500", "Server busy. Please try again later from [192.0.2.1]. (S77714)", Blame.THROTTLE),
    (454, "", "Throttling failure: Maximum sending rate exceeded.", Blame.THROTTLE),
    (421, "", "Too many concurrent SMTP connections; please try again later.", Blame.THROTTLE),
    (454, "4.7.0", "Try again later", Blame.THROTTLE),
    (421, "", "Service not available, closing transmission channel", Blame.THROTTLE),
    # Blames us: nobody bounced.
    (550, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", Blame.SENDER),
    (
        550,
        "5.7.26",
        "This mail is unauthenticated, which poses a security risk to the sender and Gmail users",
        Blame.SENDER,
    ),
    (550, "5.7.25", "The IP address sending this message does not have a PTR record setup", Blame.SENDER),
    (550, "5.7.606", "Access denied, banned sending IP [192.0.2.1].", Blame.SENDER),
    (554, "", "Transaction failed", Blame.SENDER),
    (554, "", "Message rejected: Email address is not verified.", Blame.SENDER),
    (
        553,
        "5.7.2",
        "[TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed.",
        Blame.SENDER,
    ),
    (554, "5.7.1", "<bob@example.org>: Relay access denied", Blame.SENDER),
    (550, "5.7.1", "Sender address rejected: Domain not found", Blame.SENDER),
    (554, "5.7.9", "Message not accepted for policy reasons.", Blame.SENDER),
    # Blames the message: our error, never a bounce.
    (500, "", "Line too long", Blame.MESSAGE),
    (552, "5.3.4", "Message size exceeds fixed limit", Blame.MESSAGE),
    (500, "5.5.2", "Syntax error, command unrecognized", Blame.MESSAGE),
    # The receiver's filter judged the content: soft.
    (550, "5.7.1", "Message rejected as spam by Content Filtering.", Blame.CONTENT),
    (554, "5.7.1", "Message filtered. Please see the FAQs section on spam", Blame.CONTENT),
    # Nothing recognisable.
    (451, "4.3.0", "Mail server temporarily rejected message.", Blame.TEMPORARY),
    (550, "", "Requested action not taken", Blame.UNKNOWN),
]


@pytest.mark.parametrize(("code", "status", "text", "blame"), CASES, ids=[c[2][:40] for c in CASES])
def test_reply_blames(code: int | None, status: str, text: str, blame: Blame) -> None:
    assert judge(code, status, text).blame is blame


def test_only_a_permanent_address_failure_suppresses() -> None:
    hard = [c for c in CASES if judge(*c[:3], stage=Stage.RCPT).hard]
    assert {c[3] for c in hard} == {Blame.ADDRESS}
    assert len(hard) == len([c for c in CASES if c[3] is Blame.ADDRESS])
    assert not judge(450, "4.1.1", "Recipient address rejected: unverified address: user unknown").hard
    assert not judge(550, "5.7.1", "Client host rejected: blocked using zen.spamhaus.org, user unknown").hard


def test_codes_are_read_from_the_text_when_not_given() -> None:
    verdict = judge(None, "", "Remote host said: 550 5.2.2 mailbox full")
    assert (verdict.status, verdict.permanent, verdict.blame) == ("5.2.2", True, Blame.MAILBOX)
    assert judge(None, "", "said: 451 please retry").permanent is False


def test_a_refusal_at_the_end_of_data_is_a_filter_not_a_dead_address() -> None:
    """RCPT accepted the address; "user unknown" after DATA is the receiver's filter talking."""
    assert judge(550, "5.1.1", "User unknown", stage=Stage.DATA).blame is Blame.CONTENT
    transcript = "host mx.example said: 550 5.1.1 <bob@example.org>: User unknown (in reply to end of DATA command)"
    assert not judge(None, "", transcript).hard


def test_ambiguous_wording_stays_soft_and_our_sender_is_never_the_reader() -> None:
    assert judge(None, "5.0.0", "Unknown address error 550-'5.2.2 <bob@example.org>... Mailbox Full'").blame is (
        Blame.MAILBOX
    )
    assert judge(550, "5.1.7", "No such domain sender.example.").blame is Blame.SENDER
    assert judge(550, "", "Unroutable sender address").blame is Blame.SENDER
    assert judge(None, "5.0.0", "550 #5.1.0 Address rejected.").status == "5.1.0"


def test_the_stage_is_read_from_a_transcript() -> None:
    assert judge(None, "5.0.0", "RCPT TO:<bob@example.org>: 550 bob@example.org... No such user").hard
    assert not judge(None, "", "550 5.1.1 bob@example.org... No such user (in reply to end of DATA command)").hard


def test_an_address_refused_in_reply_to_mail_from_is_ours() -> None:
    """Exim: '... after MAIL FROM:<…>: 553 5.1.0 <domain> does not exist' is about our sender domain."""
    text = (
        "SMTP error from remote mail server after MAIL FROM:<news@example.com> SIZE=1022: "
        "553 5.1.0 example.com does not exist"
    )
    verdict = judge(None, "", text)
    assert (verdict.blame, verdict.hard) == (Blame.SENDER, False)
    assert judge(553, "5.1.0", "example.com does not exist", stage=Stage.MAIL).blame is Blame.SENDER


def test_user_unknown_under_a_code_of_another_subject_is_not_hard() -> None:
    """The words say 'no such user', the code says security or policy (5.7.x): ambiguous, never hard."""
    for status, text in [
        ("5.7.1", "550 5.7.1 <bob@example.org>: Recipient address rejected: User unknown"),
        ("5.7.1", "550 5.7.1 550 User Unknown: bob@example.org"),
    ]:
        verdict = judge(550, status, text, stage=Stage.RCPT)
        assert (verdict.blame, verdict.hard) == (Blame.UNKNOWN, False), status
    for status in ("5.1.1", "5.0.0", "5.5.0", ""):
        assert judge(550, status, "550 <bob@example.org>: User unknown", stage=Stage.RCPT).hard, status


def test_user_unknown_bounces_only_when_pinned_on_the_address() -> None:
    """Hard needs the words pinned on the address: RCPT, an X.1.x status, or a reply naming it.
    Japanese carriers answer "550 : User unknown" for a reader's own filter settings."""
    assert judge(None, "5.0.0", "550 <bob@ezweb.ne.jp>: User unknown").hard
    assert not judge(None, "5.0.0", "550 : User unknown").hard
    assert not judge(None, "", "<bob@ezweb.ne.jp>: 550: : User unknown").hard
    assert judge(None, "", "Unknown user: bob@example.com").hard  # the reporting MTA's own verdict
    # Under a specific non-address status, only the RCPT stage pins it.
    assert not judge(None, "5.2.1", "550 5.2.1 <bob@example.jp>... User Unknown").hard
    assert judge(None, "5.2.1", "550 5.2.1 <bob@example.jp>... User Unknown", stage=Stage.RCPT).hard
    assert judge(
        None, "", "192.0.2.1 does not like recipient. Remote host said: 550 5.2.1 <b@x.jp>... User Unknown"
    ).hard
    assert judge(None, "", "Remote host said: 550 5.2.1 <b@x.jp>... User Unknown [RCPT_TO]").hard
    assert judge(None, "5.3.0", "Technical details: SMTP:RCPT host 192.0.2.8: 553 5.3.0 <b@x.com>... No such user").hard
    # Postfix says "Recipient address rejected" only at RCPT: that names the stage when none is
    # known, never over the stage the sender saw (a filter quoting it after DATA stays soft).
    postfix = "550 5.1.1 <b@x.jp>: Recipient address rejected: User unknown in local recipient table"
    assert judge(None, "", postfix).hard
    assert not judge(None, "", postfix, stage=Stage.DATA).hard
    assert judge(550, "", "<bob@example.jp>: Recipient address rejected.", stage=Stage.RCPT).hard
    # A local delivery agent that failed is the receiving system's trouble, not a dead address.
    assert not judge(550, "5.1.1", 'procmail: Couldn\'t create "/var/spool/mail/bob": No such user').hard
    # A domain that does not exist is about the domain, whatever was quoted.
    assert judge(None, "5.0.0", "No such domain.").hard
    assert judge(554, "5.5.0", "The mail could not be delivered because the domain is not reachable.").hard


def test_a_lookup_that_may_work_later_or_a_refusal_of_our_name_is_no_dead_domain() -> None:
    assert not judge(None, "5.4.4", "Host not found, try again").hard  # Postfix's TRY_AGAIN, queue expired
    assert not judge(None, "5.0.0", "connect to mx.example.org[192.0.2.1]:25: No route to host").hard
    helo = "<mail.news.example>: Helo command rejected: Host not found"
    assert judge(550, "5.7.1", helo, stage=Stage.RCPT).blame is Blame.SENDER
    assert judge(550, "5.1.10", "Recipient address has null MX").hard


def test_a_policy_code_inside_the_text_outranks_user_unknown_words() -> None:
    text = "5.1.0 - Unknown address error 550-'5.7.1 <x@email-bounces.example>... Access denied'"
    assert not judge(None, "5.1.0", text).hard
    assert judge(550, "5.1.1", "RCP-P2 Refused due to recipient preferences").blame is Blame.CONTENT
    assert judge(550, "5.7.27", "Sender address has null MX").blame is Blame.SENDER
