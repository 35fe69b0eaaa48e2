"""SMTP PIPELINING (RFC 2920) against a real aiosmtpd server that offers it or not.

aiosmtpd does not offer PIPELINING (its EHLO lists SIZE, 8BITMIME, SMTPUTF8, HELP), but it
reads commands from a stream, so a pipelined client works against it. The server here is
the tests' recording server with two additions: its EHLO can offer PIPELINING, and it
logs every chunk it reads from the socket, so a test sees which commands came in one
write. The same send with the same faults must leave the same ledger either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AiosmtpdServer
from aiosmtpd.smtp import Envelope, Session
from conftest import RecordingHandler, free_port
from sending_support import add_subscribers, build_issue, deliveries, issue_status, with_smtp
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from newsletter import sender
from newsletter.config import Settings, SmtpSettings
from newsletter.errors import PermanentDeliveryError
from newsletter.models import Delivery, Subscriber
from newsletter.replies import Stage
from newsletter.transport import SmtpTransport

COMMANDS = (b"MAIL ", b"RCPT ", b"DATA\r\n", b"RSET\r\n", b"QUIT\r\n")


class WireHandler(RecordingHandler):
    """The recording handler, offering PIPELINING in EHLO when asked, and noting each
    recipient's ledger status at the moment its message arrived."""

    def __init__(self, *, pipelining: bool, sessions: sessionmaker[DbSession] | None = None) -> None:
        super().__init__()
        self.pipelining = pipelining
        self.sessions = sessions
        self.chunks: list[bytes] = []
        self.status_at_data: dict[str, str] = {}
        self.accept_refused_rcpt = False  # a sloppy server: answers 550 to RCPT, yet keeps it (so DATA gets 354)

    async def handle_EHLO(
        self, server: AiosmtpdServer, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: AiosmtpdServer, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        reply = await super().handle_RCPT(server, session, envelope, address, rcpt_options)
        if self.accept_refused_rcpt and not reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: AiosmtpdServer, session: Session, envelope: Envelope) -> str:
        if self.sessions is not None:
            with self.sessions() as s:
                for rcpt in envelope.rcpt_tos:
                    status = s.scalar(select(Delivery.status).join(Subscriber).where(Subscriber.email == rcpt.lower()))
                    self.status_at_data[rcpt] = str(status)
        return await super().handle_DATA(server, session, envelope)

    def recipients(self) -> list[str]:
        return [r for m in self.messages for r in m.rcpt_tos]

    def writes_with_commands(self) -> list[list[bytes]]:
        """The commands each chunk read from the socket carried (chunks with none left out)."""
        found = []
        for chunk in self.chunks:
            lines = [line for line in chunk.split(b"\r\n") if (line + b"\r\n").startswith(COMMANDS)]
            if lines:
                found.append([line.split(b" ")[0].split(b":")[0] for line in lines])
        return found


class LoggingServer(AiosmtpdServer):
    def data_received(self, data: bytes) -> None:
        self.event_handler.chunks.append(bytes(data))
        super().data_received(data)


class WireController(Controller):
    def factory(self) -> AiosmtpdServer:
        return LoggingServer(self.handler, **self.SMTP_kwargs)


@dataclass
class WireServer:
    port: int
    handler: WireHandler


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
def wire_server(request: pytest.FixtureRequest, sessions: sessionmaker[DbSession]) -> Iterator[WireServer]:
    handler = WireHandler(pipelining=request.param, sessions=sessions)
    port = free_port()
    controller = WireController(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield WireServer(port, handler)
    finally:
        controller.stop()


USER_UNKNOWN = "550 5.1.1 <reader1@example.org>: Recipient address rejected: User unknown"
GREYLISTED = "451 4.7.1 Greylisted, try again later"
MAILBOX_FULL = "552 5.2.2 Mailbox full"
SPAM = "554 5.7.1 Message rejected as spam by content filter"


def test_pipelined_and_plain_sends_leave_the_same_ledger(
    wire_server: WireServer, sessions: sessionmaker[DbSession], settings: Settings
) -> None:
    handler = wire_server.handler
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 6)
    handler.faults.rcpt[emails[1]] = USER_UNKNOWN  # names the address: failed, bounced
    handler.faults.rcpt_once[emails[2]] = [GREYLISTED]  # retried, then delivered
    handler.faults.rcpt[emails[3]] = MAILBOX_FULL  # the mailbox, permanently: failed, never bounced
    handler.faults.data[emails[4]] = [SPAM]  # refused after the body: failed, never bounced

    report = sender.send(sessions, with_smtp(settings, port=wire_server.port, concurrency=2), week)

    rows = deliveries(sessions, week)
    with sessions.begin() as s:
        subscriber = dict(s.execute(select(Subscriber.email, Subscriber.status)).all())
    ledger = {
        e: (str(d.status), d.attempts, d.last_reply.split(" (gave up")[0], str(subscriber[e])) for e, d in rows.items()
    }
    assert ledger == {
        emails[0]: ("sent", 1, "250 2.0.0 OK queued", "active"),
        emails[1]: ("failed", 1, USER_UNKNOWN, "bounced"),
        emails[2]: ("sent", 2, "250 2.0.0 OK queued", "active"),
        emails[3]: ("failed", 1, MAILBOX_FULL, "active"),
        emails[4]: ("failed", 1, SPAM, "active"),
        emails[5]: ("sent", 1, "250 2.0.0 OK queued", "active"),
    }
    assert (report.sent, report.failed, report.bounced) == (3, 3, 1)
    assert sorted(handler.recipients()) == sorted([emails[0], emails[2], emails[5]])
    assert issue_status(sessions, week) == "sent"
    # Ledger first, pipelined or not: each row was `sending` on disk when its body arrived.
    assert set(handler.status_at_data.values()) == {"sending"}
    assert len(handler.status_at_data) == 4  # the three delivered and the one refused after its body

    envelopes = [c for c in handler.writes_with_commands() if c[0] == b"MAIL"]
    if handler.pipelining:  # MAIL, RCPT and DATA in one write, every time
        assert envelopes and all(c == [b"MAIL", b"RCPT", b"DATA"] for c in envelopes)
    else:  # never more than one command in a write
        assert all(len(c) == 1 for c in handler.writes_with_commands())
        assert len(envelopes) == 7  # 6 readers, one greylisted once


def test_a_refused_recipient_is_the_same_error_pipelined_or_not(sessions: sessionmaker[DbSession]) -> None:
    """What the sender judges (code, reply, stage) does not depend on pipelining, and a
    server that answers 354 to DATA after refusing the only recipient gets no body:
    the connection is dropped, and the next message goes out on a new one."""

    async def refused_then_delivered(handler: WireHandler) -> PermanentDeliveryError:
        handler.faults.rcpt["gone@example.org"] = USER_UNKNOWN
        port = free_port()
        controller = WireController(handler, hostname="127.0.0.1", port=port)
        controller.start()
        transport = SmtpTransport(SmtpSettings(host="127.0.0.1", port=port, concurrency=1))
        try:
            with pytest.raises(PermanentDeliveryError) as refused:
                await transport.send("news@example.com", "gone@example.org", b"Subject: x\r\n\r\nhello\r\n")
            reply = await transport.send("news@example.com", "here@example.org", b"Subject: y\r\n\r\nhello\r\n")
            assert reply == "250 2.0.0 OK queued"
        finally:
            await transport.close()
            controller.stop()
        return refused.value

    errors = []
    for pipelining, sloppy in ((False, False), (True, False), (True, True)):
        handler = WireHandler(pipelining=pipelining)
        handler.accept_refused_rcpt = sloppy
        errors.append(asyncio.run(refused_then_delivered(handler)))
        assert handler.recipients() == ["here@example.org"]  # the refused one never got a body
        if sloppy:  # its DATA was answered 354, so the client hung up rather than send anything
            assert handler.writes_with_commands()[-2:] == [[b"MAIL", b"RCPT", b"DATA"], [b"QUIT"]]
    assert {(e.code, e.reply, e.stage) for e in errors} == {(550, USER_UNKNOWN, Stage.RCPT)}
