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
from dataclasses import replace
from pathlib import Path
from typing import Protocol

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
STAGES = {b"MAIL": Stage.MAIL, b"RCPT": Stage.RCPT, b"DATA": Stage.DATA, b"RSET": Stage.UNKNOWN}


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


class _Wire:
    """The one place that uses aiosmtplib below its `sendmail` API. Why: `sendmail` re-scans
    every message with regexes (line ends, dot-stuffing) and cannot wait between the
    server's 354 and the body; the engine needs both the prepared bytes sent as they are
    and that wait (its ledger commit). So: commands through `execute_command`, the body
    through the connection's protocol in one write, its reply through `read_response`."""

    @staticmethod
    async def command(conn: aiosmtplib.SMTP, *args: bytes) -> tuple[int, str]:
        response = await conn.execute_command(*args, timeout=None)
        return response.code, response.message

    @staticmethod
    async def body(conn: aiosmtplib.SMTP, body: bytes, timeout: float) -> tuple[int, str]:
        protocol = conn.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        protocol.write(body + b".\r\n")  # one send() call: the copy costs less than a syscall
        response = await protocol.read_response(timeout=timeout)
        return response.code, response.message


class SmtpTransport:
    """A pool of up to `[smtp] concurrency` persistent connections; each carries many messages."""

    def __init__(self, smtp: SmtpSettings) -> None:
        self.smtp = smtp
        self.address = f"{smtp.host}:{smtp.port}"
        self._tls = tls_context(smtp)
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(smtp.concurrency)
        # EHLO name: socket.getfqdn() (aiosmtplib's default) can stall on DNS.
        self._local_hostname = socket.gethostname() or "localhost"

    def _new_connection(self) -> aiosmtplib.SMTP:
        s = self.smtp
        return aiosmtplib.SMTP(
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

    async def _connect(self, conn: aiosmtplib.SMTP) -> None:
        with _map_errors(f"cannot connect to SMTP server {self.address}", Stage.CONNECT):
            await conn.connect()
            if conn.is_ehlo_or_helo_needed:
                await conn.ehlo()

    async def _command(
        self, conn: aiosmtplib.SMTP, deadline: asyncio.Timeout, stage: str, *args: bytes, ok: tuple[int, ...] = (250,)
    ) -> str:
        deadline.reschedule(asyncio.get_running_loop().time() + self.smtp.timeout)
        step = STAGES[args[0]]
        with _map_errors(f"{stage} at {self.address}", step):
            code, message = await _Wire.command(conn, *args)
        if code not in ok:
            # 421: the server is closing this connection; a 5xx to MAIL FROM refuses our sender.
            # Neither is the recipient's fault: the run stops or reconnects, nobody bounces.
            if code == 421 or (step is Stage.MAIL and code >= 500):
                raise TransportUnavailable(
                    f"{stage}: {code} {message}", code=code, reply=f"{code} {message}", stage=step
                )
            raise _reply_error(code, message, stage, step)
        return message

    async def _data(
        self, conn: aiosmtplib.SMTP, deadline: asyncio.Timeout, body: bytes, before: BeforeData | None
    ) -> str:
        """DATA with a body already in wire form: written as is, no second normalisation pass.

        `before` runs once the server waits for the body (354). If it raises, the
        connection is dropped, so the server discards the unfinished transaction."""
        await self._command(conn, deadline, "DATA", b"DATA", ok=(354,))
        if before is not None:
            deadline.reschedule(None)  # our own wait, not the server's
            try:
                await before()
            except BaseException:
                conn.close()
                raise
        deadline.reschedule(None)  # the final reply has its own, longer wait (RFC 5321 4.5.3.2.6)
        try:
            with _map_errors(f"sending the message to {self.address}", Stage.DATA):
                code, message = await _Wire.body(conn, body, self.smtp.data_timeout)
        except TransportUnavailable as exc:
            conn.close()  # the reply may still arrive: never pair it with a later command
            if isinstance(exc.__cause__, aiosmtplib.SMTPTimeoutError):
                # The message is out and the server is silent: it may be queued already.
                # A dropped connection, by contrast, means the server discards the transaction.
                raise AmbiguousDelivery(
                    f"no reply from SMTP server {self.address} within "
                    f"{self.smtp.data_timeout:g} s after the whole message",
                    reply="ambiguous: no reply to the end of the message",
                ) from exc
            raise
        if code != 250:
            if code == 421:
                conn.close()
            raise _reply_error(code, message, "end of DATA", Stage.DATA)
        return f"{code} {message}"

    async def _transaction(
        self,
        conn: aiosmtplib.SMTP,
        mail_from: bytes,
        rcpt_to: bytes,
        options: tuple[bytes, ...],
        body: bytes,
        before: BeforeData | None,
    ) -> str:
        """MAIL, RCPT, DATA and the body. One deadline, moved forward at each command, bounds
        each wait for the server (cheaper than a wait_for around every reply)."""
        async with asyncio.timeout(None) as deadline:
            await self._command(conn, deadline, "MAIL FROM", b"MAIL", b"FROM:<" + mail_from + b">", *options)
            await self._command(
                conn, deadline, f"RCPT TO {rcpt_to.decode()}", b"RCPT", b"TO:<" + rcpt_to + b">", ok=(250, 251)
            )
            return await self._data(conn, deadline, body, before)

    async def _reset(self, conn: aiosmtplib.SMTP) -> None:
        try:
            with _map_errors("RSET"):
                code, _ = await _Wire.command(conn, b"RSET")
            if code != 250:
                conn.close()
        except TransportUnavailable:
            conn.close()

    async def send(
        self, envelope_from: str, recipient: str, data: bytes, *, before_data: BeforeData | None = None
    ) -> str:
        if ADDRESS_FORBIDDEN.search(envelope_from + recipient):
            raise PermanentDeliveryError(f"{recipient!r} is not a usable address", reply="not sent: bad address")
        body = wire_form(data)
        async with self._slots:
            conn = self._idle.pop() if self._idle else self._new_connection()
            try:
                if not conn.is_connected:
                    await self._connect(conn)
                mail_from, rcpt_to = envelope_from.encode(), recipient.encode()
                options: tuple[bytes, ...] = ()
                if not (envelope_from + recipient).isascii():
                    if not conn.supports_extension("smtputf8"):
                        raise PermanentDeliveryError(
                            f"{recipient}: the server does not offer SMTPUTF8, needed for a non-ASCII address",
                            reply="not sent: server lacks SMTPUTF8",
                        )
                    options = (b"SMTPUTF8",)
                try:
                    return await self._transaction(conn, mail_from, rcpt_to, options, body, before_data)
                except TimeoutError as exc:
                    conn.close()  # a late reply must never be paired with a later command
                    raise TransportUnavailable(
                        f"no reply from SMTP server {self.address} within {self.smtp.timeout:g} s", reply="timeout"
                    ) from exc
                except BaseException:
                    if conn.is_connected:
                        await self._reset(conn)
                    raise
            finally:
                if conn.is_connected:
                    self._idle.append(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                with _map_errors("QUIT"):
                    await conn.quit()
            except TransportUnavailable:
                conn.close()


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
