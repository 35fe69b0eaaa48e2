"""Hand finished messages over: to an SMTP server through a pool of persistent
aiosmtplib connections, or to a folder of .eml files (the outbox, for trying the tool
without a mail server).

The engine sees only `Transport.send(envelope_from, recipient, data)`. No aiosmtplib
exception leaves this module: `_map_errors` turns each into the DeliveryError family by
reply class (4xx → TransientDeliveryError, 5xx → PermanentDeliveryError, connect,
timeout, drop → TransportUnavailable), keeping the server's code and reply text.

Speed: `data` is normally produced by `message.py` already in wire form (CRLF line
ends, no line starting with '.'), so the DATA body goes out through aiosmtplib's
lower-level protocol without its per-message regex passes (`_Wire`, the one place that
touches it); anything else is normalised here the slow way.

TLS: `ssl` (port 465) or `starttls` (587), always verified, against `[smtp] ca_file`
when set; a login is refused without TLS unless `[smtp] auth_without_tls` says so.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Protocol, cast

import aiosmtplib

from newsletter.config import Settings, SmtpSettings
from newsletter.errors import (
    AmbiguousDelivery,
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    TransportUnavailable,
)
from newsletter.message import WireBytes
from newsletter.replies import Stage

BeforeData = Callable[[], Awaitable[None]]
ADDRESS_FORBIDDEN = re.compile(r"[\x00-\x20<>\x7f]")  # would break out of MAIL FROM:<…> / RCPT TO:<…>
LINE_END = re.compile(rb"\r\n|\r|\n")
MAX_REPLY = 32_768  # bytes of one reply at most (aiosmtplib's bound too)


class NoReply(Exception):
    """The server did not answer in time (kept apart from socket timeouts: a late reply
    must never be read as another command's, so the connection is always dropped)."""


@dataclass(frozen=True)
class Command:
    """One command of a transaction: its line, its name in errors, and the replies hoped for."""

    text: bytes
    name: str
    stage: Stage
    ok: tuple[int, ...] = (250,)

    @property
    def line(self) -> bytes:
        return self.text + b"\r\n"


DATA = Command(b"DATA", "DATA", Stage.DATA, (354,))


@lru_cache(maxsize=16)
def _mail_from(envelope_from: str, options: bytes) -> Command:
    """MAIL FROM, made once per envelope sender (the same for every message unless VERP)."""
    return Command(b"MAIL FROM:<" + envelope_from.encode() + b">" + options, "MAIL FROM", Stage.MAIL)


class Transport(Protocol):
    async def send(
        self, envelope_from: str, recipient: str, data: bytes, *, before_data: BeforeData | None = None
    ) -> str:
        """Hand one message over; return the server's reply text.

        `before_data` runs once the server has accepted the recipient and waits for
        the message, before the message is handed over; if it raises, the transaction
        is abandoned and the exception propagates (the engine waits there for its
        ledger commit, so the commit overlaps MAIL, RCPT and DATA).
        Raises TransientDeliveryError, PermanentDeliveryError or TransportUnavailable."""
        ...

    async def close(self) -> None: ...


def _reply_error(code: int, text: str, where: str, stage: Stage) -> DeliveryError:
    reply = f"{code} {text}".strip()
    if 400 <= code < 500:
        return TransientDeliveryError(f"{where}: {reply}", code=code, reply=reply, stage=stage)
    if 500 <= code < 600:
        return PermanentDeliveryError(f"{where}: {reply}", code=code, reply=reply, stage=stage)
    return TransportUnavailable(f"{where}: unexpected reply {reply}", code=code, reply=reply, stage=stage)


@contextmanager
def _map_errors(where: str, stage: Stage = Stage.UNKNOWN) -> Iterator[None]:
    """Translate aiosmtplib and socket errors at the boundary (cf. httpx map_exceptions)."""
    try:
        yield
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise TransportUnavailable(
            f"{where}: login refused ({exc.code} {exc.message}); check [smtp] username and password",
            code=exc.code,
            reply=f"{exc.code} {exc.message}",
            stage=stage,
        ) from exc
    except aiosmtplib.SMTPResponseException as exc:
        # Replies raised here come from the greeting, EHLO or STARTTLS: they are about us or
        # the server, never about a recipient, so no 5xx here may bounce a subscriber.
        raise TransportUnavailable(
            f"{where}: {exc.code} {exc.message}", code=exc.code, reply=f"{exc.code} {exc.message}", stage=stage
        ) from exc
    except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, ssl.SSLError, OSError) as exc:
        cert = _cert_failure(exc)
        if cert is None:
            text = str(exc) or type(exc).__name__
            raise TransportUnavailable(f"{where}: {text}", reply=text, stage=stage) from exc
        raise TransportUnavailable(
            f"{where}: its TLS certificate failed verification ({cert}); fix the server's "
            f"certificate or set [smtp] ca_file to the CA that signed it",
            reply=f"TLS certificate failed verification: {cert}",
            stage=stage,
        ) from exc
    except (TimeoutError, aiosmtplib.SMTPException) as exc:
        text = str(exc) or type(exc).__name__
        raise TransportUnavailable(f"{where}: {text}", reply=text, stage=stage) from exc


def _cert_failure(exc: BaseException) -> str | None:
    """The verifier's reason if `exc` (or what caused it) is a failed certificate check."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def wire_form(data: bytes) -> bytes:
    """`data` with CRLF line ends and leading dots doubled (RFC 5321 4.5.2).

    Messages from `message.py` are WireBytes: already so, passed through untouched."""
    if isinstance(data, WireBytes):
        return data
    if data.count(b"\n") != data.count(b"\r\n") or data.count(b"\r") != data.count(b"\r\n"):
        data = LINE_END.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


def tls_context(smtp: SmtpSettings) -> ssl.SSLContext | None:
    """The verifying TLS context for [smtp] (system CAs, or `ca_file`); None without TLS.

    Raises ConfigError if the CA file cannot be read."""
    if not (smtp.ssl or smtp.starttls):
        return None
    try:
        return ssl.create_default_context(cafile=smtp.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"[smtp] ca_file {smtp.ca_file!r}: {reason}; give a PEM file of CA certificates") from exc


class _Wire(asyncio.Protocol):
    """One SMTP connection's message phase, below aiosmtplib's API.

    aiosmtplib opens the connection (TCP, TLS or STARTTLS, EHLO, AUTH); then this
    protocol takes the transport over for MAIL, RCPT, DATA, the body, RSET and QUIT.
    Why: aiosmtplib reads one reply per command and drops what arrives before it asks, so
    it cannot pipeline (RFC 2920), re-scans every body with regexes, and pays a lock,
    a future and a `wait_for` per command. Here a write carries any number of commands
    and one future wakes the sender once all their replies are in; a body already in
    wire form goes out as it is. Replies nobody asked for (a server's 421 before it
    hangs up on an idle connection) are dropped, never paired with a later command."""

    def __init__(self, conn: aiosmtplib.SMTP) -> None:
        transport = conn.transport
        if transport is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        self.conn = conn
        self.pipelining = conn.supports_extension("pipelining")
        self.smtputf8 = conn.supports_extension("smtputf8")
        self.transport: asyncio.WriteTransport = cast(asyncio.WriteTransport, transport)
        self.buffer = bytearray()
        self.replies: list[tuple[int, str]] = []
        self.text: list[str] = []  # the lines of a multi-line reply read so far
        self.wanted = 0
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False
        transport.set_protocol(self)

    @property
    def is_connected(self) -> bool:
        return not self.lost and not self.transport.is_closing()

    def close(self) -> None:
        self.lost = True
        self.transport.close()
        self.conn.close()

    def data_received(self, data: bytes) -> None:
        if not self.wanted:
            return  # unsolicited: see the class docstring
        self.buffer += data
        while (end := self.buffer.find(b"\n")) >= 0:
            line = bytes(self.buffer[: end + 1])
            del self.buffer[: end + 1]
            if not line[:3].isdigit():
                self._fail(aiosmtplib.SMTPResponseException(-1, f"malformed SMTP reply {line[:80]!r}"))
                return
            self.text.append(line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape"))
            if line[3:4] != b"-":  # the last line of a reply (multi-line ones joined as aiosmtplib does)
                self.replies.append((int(line[:3]), "\n".join(self.text)))
                self.text = []
        if len(self.buffer) > MAX_REPLY:
            self._fail(aiosmtplib.SMTPResponseException(-1, "SMTP reply too long"))
        elif len(self.replies) >= self.wanted and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(aiosmtplib.SMTPServerDisconnected(f"connection lost{f': {exc}' if exc else ''}"))

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("connection closed by the server"))
        return False

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def exchange(self, data: bytes, count: int, timeout: float | None) -> list[tuple[int, str]]:
        """Write `data` (`count` commands, or a body ending in its dot) and wait for `count`
        replies, `timeout` seconds at most (NoReply; the caller then drops the
        connection, so a late reply is never read as another command's)."""
        if self.lost or self.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        loop = asyncio.get_running_loop()
        self.buffer.clear()  # anything left is unsolicited
        self.replies, self.text, self.wanted = [], [], count
        self.waiter = waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, self._expire, waiter)
        try:
            self.transport.write(data)  # one send() call: the copy costs less than a syscall
            await waiter
        finally:
            self.wanted, self.waiter = 0, None
            if timer is not None:
                timer.cancel()
        return self.replies[:count]

    @staticmethod
    def _expire(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(NoReply())


class SmtpTransport:
    """A pool of up to `[smtp] concurrency` persistent connections; each carries many messages."""

    def __init__(self, smtp: SmtpSettings) -> None:
        self.smtp = smtp
        self.address = f"{smtp.host}:{smtp.port}"
        self._tls = tls_context(smtp)
        self._idle: list[_Wire] = []
        self._slots = asyncio.Semaphore(smtp.concurrency)
        # EHLO name: socket.getfqdn() (aiosmtplib's default) can stall on DNS.
        self._local_hostname = socket.gethostname() or "localhost"

    async def _connect(self) -> _Wire:
        """A new connection, greeted, secured and logged in by aiosmtplib, handed to a _Wire."""
        s = self.smtp
        conn = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username or None,
            password=s.password.reveal() or None,
            timeout=s.timeout,
            use_tls=s.ssl,
            start_tls=s.starttls,
            tls_context=self._tls,
            local_hostname=self._local_hostname,
        )
        with _map_errors(f"cannot connect to SMTP server {self.address}", Stage.CONNECT):
            try:
                await conn.connect()
                if conn.is_ehlo_or_helo_needed:
                    await conn.ehlo()
                return _Wire(conn)
            except BaseException:
                conn.close()
                raise

    def _check(self, reply: tuple[int, str], command: Command) -> None:
        """Raise the DeliveryError a reply to `command` means, unless it is the one hoped for."""
        code, message = reply
        if code in command.ok:
            return
        # 421: the server is closing this connection; a 5xx to MAIL FROM refuses our sender.
        # Neither is the recipient's fault: the run stops or reconnects, nobody bounces.
        if code == 421 or (command.stage is Stage.MAIL and code >= 500):
            raise TransportUnavailable(
                f"{command.name}: {code} {message}", code=code, reply=f"{code} {message}", stage=command.stage
            )
        raise _reply_error(code, message, command.name, command.stage)

    async def _envelope(self, wire: _Wire, commands: tuple[Command, ...]) -> None:
        """MAIL, RCPT and DATA: in one write when the server offers PIPELINING (RFC 2920),
        else one at a time. Either way the replies are judged in order, so the first
        refusal decides, exactly as without pipelining."""
        timeout = self.smtp.timeout
        with _map_errors(f"{commands[0].name} at {self.address}", Stage.MAIL):
            if wire.pipelining:
                replies = await wire.exchange(b"".join(c.line for c in commands), len(commands), timeout)
            else:
                replies = []
                for c in commands:
                    replies += await wire.exchange(c.line, 1, timeout)
                    if replies[-1][0] not in c.ok:
                        break
        try:
            for reply, command in zip(replies, commands, strict=False):
                self._check(reply, command)
        except DeliveryError:
            if replies[-1][0] == 354:  # DATA went ahead of a refusal: only hanging up ends it
                wire.close()
            raise

    async def _data(self, wire: _Wire, body: bytes, before: BeforeData | None) -> str:
        """The body, already in wire form, written as it is, once `before` has run.

        If `before` raises, the connection is dropped, so the server discards the
        unfinished transaction."""
        if before is not None:
            try:
                await before()
            except BaseException:
                wire.close()
                raise
        try:
            with _map_errors(f"sending the message to {self.address}", Stage.DATA):
                # The final reply has its own, longer wait (RFC 5321 4.5.3.2.6).
                ((code, message),) = await wire.exchange(body + b".\r\n", 1, self.smtp.data_timeout)
        except NoReply as exc:
            wire.close()
            # The message is out and the server is silent: it may be queued already.
            # A dropped connection, by contrast, means the server discards the transaction.
            raise AmbiguousDelivery(
                f"no reply from SMTP server {self.address} within {self.smtp.data_timeout:g} s after the whole message",
                reply="ambiguous: no reply to the end of the message",
            ) from exc
        except TransportUnavailable:
            wire.close()  # the reply may still arrive: never pair it with a later command
            raise
        if code != 250:
            if code == 421:
                wire.close()
            raise _reply_error(code, message, "end of DATA", Stage.DATA)
        return f"{code} {message}"

    async def _reset(self, wire: _Wire) -> None:
        try:
            with _map_errors("RSET"):
                ((code, _),) = await wire.exchange(b"RSET\r\n", 1, self.smtp.timeout)
            if code != 250:
                wire.close()
        except (TransportUnavailable, NoReply):
            wire.close()

    async def send(
        self, envelope_from: str, recipient: str, data: bytes, *, before_data: BeforeData | None = None
    ) -> str:
        if ADDRESS_FORBIDDEN.search(envelope_from + recipient):
            raise PermanentDeliveryError(f"{recipient!r} is not a usable address", reply="not sent: bad address")
        body = wire_form(data)
        async with self._slots:
            wire = self._idle.pop() if self._idle else None
            if wire is None or not wire.is_connected:
                wire = await self._connect()
            try:
                options = b""
                if not (envelope_from + recipient).isascii():
                    if not wire.smtputf8:
                        raise PermanentDeliveryError(
                            f"{recipient}: the server does not offer SMTPUTF8, needed for a non-ASCII address",
                            reply="not sent: server lacks SMTPUTF8",
                        )
                    options = b" SMTPUTF8"
                commands = (
                    _mail_from(envelope_from, options),
                    Command(b"RCPT TO:<" + recipient.encode() + b">", f"RCPT TO {recipient}", Stage.RCPT, (250, 251)),
                    DATA,
                )
                try:
                    await self._envelope(wire, commands)
                except NoReply as exc:
                    wire.close()  # a late reply must never be paired with a later command
                    raise TransportUnavailable(
                        f"no reply from SMTP server {self.address} within {self.smtp.timeout:g} s", reply="timeout"
                    ) from exc
                except BaseException:
                    if wire.is_connected:
                        await self._reset(wire)
                    raise
                return await self._data(wire, body, before_data)
            finally:
                if wire.is_connected:
                    self._idle.append(wire)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for wire in idle:
            try:
                with _map_errors("QUIT"):
                    await wire.exchange(b"QUIT\r\n", 1, self.smtp.timeout)
            except (TransportUnavailable, NoReply):
                pass
            wire.close()


MESSAGE_ID_RE = re.compile(rb"^Message-ID:\s*<([^>@\r\n]+)", re.IGNORECASE | re.MULTILINE)


class OutboxTransport:
    """Writes each message as `<outbox_dir>/<Message-ID local part>.eml` (atomically)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def send(
        self, envelope_from: str, recipient: str, data: bytes, *, before_data: BeforeData | None = None
    ) -> str:
        if before_data is not None:
            await before_data()
        match = MESSAGE_ID_RE.search(data, 0, data.find(b"\r\n\r\n") + 2 if b"\r\n\r\n" in data else len(data))
        name = re.sub(r"[^A-Za-z0-9._-]", "_", match[1].decode("ascii", "replace")) if match else uuid.uuid4().hex
        path = self.folder / f"{name}.eml"
        tmp = path.with_suffix(".tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise TransportUnavailable(
                f"cannot write to the outbox {self.folder}: {exc.strerror}; check [delivery] outbox_dir", reply=str(exc)
            ) from exc
        return f"250 written to {path}"

    async def close(self) -> None:
        return None


def open_transport(settings: Settings, *, size: int | None = None) -> Transport:
    """The transport chosen by [delivery] transport: an SMTP pool or the outbox folder."""
    if settings.delivery.transport == "outbox":
        return OutboxTransport(settings.resolve(settings.delivery.outbox_dir))
    return SmtpTransport(settings.smtp if size is None else replace(settings.smtp, concurrency=size))


async def send_one(settings: Settings, envelope_from: str, recipient: str, data: bytes) -> str:
    """Send a single message (e.g. a confirmation email) on a fresh connection."""
    transport = open_transport(settings, size=1)
    try:
        return await transport.send(envelope_from, recipient, data)
    finally:
        await transport.close()
