"""Download a feed: over HTTP(S) to public addresses only, within one total deadline and a
size cap, or from a local file under the same cap.

A feed's URL is untrusted: it (or any redirect it answers with) could point the server at
itself or its network, and whatever it returns may be mailed to every reader. So every
connection, after every redirect, goes to an address checked after resolving the name
(loopback, private, link-local and other non-public ranges are refused, and the checked
address is the one connected to, so a second DNS answer cannot swap it), unless the URL's
host is listed in `[articles] allow_hosts`. The deadline bounds the whole fetch (connect,
TLS, redirects, every read), so a server dripping a byte a second stops at it.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx

from newsletter.errors import InvalidInput

MAX_FEED_BYTES = 20 * 1024 * 1024
MAX_REDIRECTS = 5
ALLOW_HINT = "add the host to [articles] allow_hosts only if you trust it"


@dataclass(frozen=True)
class Download:
    data: bytes | None  # None: 304 not modified
    headers: dict[str, str]
    url: str  # where the feed was finally read from ('' for a file)


class Refused(httpcore.ConnectError):
    """A connection to a non-public address that allow_hosts does not list."""


def _non_public(address: str) -> str:
    """What kind of non-public address `address` is, or '' if it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return "" if ip.is_global else "non-public"


def public_addresses(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to; Refused if any of them is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host} ({exc})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        kind = _non_public(address)
        if kind:
            shown = host if host == address else f"{host} ({address})"
            raise Refused(f"{shown} is a {kind} address; feeds may only reach public addresses ({ALLOW_HINT})")
    return addresses


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, timeout: float | None) -> float:
        """`timeout` cut to what is left of the deadline; ReadTimeout once it has passed."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout(f"the whole fetch took longer than {self.seconds:g} s")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the fetch's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self.inner, self.deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.deadline.left(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self.inner.start_tls(ssl_context, server_hostname, self.deadline.left(timeout)), self.deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _PublicOnlyBackend(httpcore.NetworkBackend):
    """Connects only to checked public addresses (or hosts the config allows), within the deadline."""

    def __init__(self, allow_hosts: Iterable[str], deadline: _Deadline) -> None:
        self.allow = {h.strip().lower().strip("[]") for h in allow_hosts}
        self.deadline = deadline
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        host = host.lower().strip("[]")
        addresses = [host] if host in self.allow else public_addresses(host, port)
        error: httpcore.ConnectError | None = None
        for address in addresses:  # the checked addresses themselves: no second lookup
            try:
                stream = self.inner.connect_tcp(
                    address, port, self.deadline.left(timeout), local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self.deadline)
        assert error is not None
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise Refused("feeds are not read from unix sockets")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _Transport(httpx.HTTPTransport):
    """httpx's own transport (request/response mapping, error translation) over the checked
    connections. httpx has no public way yet to pass a network backend, hence `_pool`."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False), network_backend=backend
        )


def fetch_url(
    url: str,
    *,
    etag: str = "",
    last_modified: str = "",
    timeout: float,
    allow_hosts: Iterable[str],
    user_agent: str,
    max_bytes: int = MAX_FEED_BYTES,
) -> Download:
    """GET `url` (conditionally, with `etag` / `last_modified`) within `timeout` seconds in
    total. Raises InvalidInput with the reason: HTTP status, deadline, size, a refused address."""
    deadline = _Deadline(timeout)
    headers = {"User-Agent": user_agent}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    try:
        with (
            httpx.Client(
                transport=_Transport(_PublicOnlyBackend(allow_hosts, deadline)),
                timeout=timeout,
                follow_redirects=True,
                max_redirects=MAX_REDIRECTS,
                trust_env=False,
            ) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code == 304:
                return Download(None, dict(response.headers), str(response.url))
            if response.status_code >= 400:
                raise InvalidInput(f"HTTP {response.status_code} from {url}")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidInput(f"{url} is larger than {max_bytes // 2**20} MB")
                chunks.append(chunk)
    except httpx.TimeoutException:
        raise InvalidInput(f"{url} did not answer in full within {timeout:g} s ([articles] fetch_timeout)") from None
    except httpx.HTTPError as exc:
        if isinstance(exc.__cause__, Refused):
            where = str(exc.request.url) if isinstance(exc, httpx.RequestError) else url
            via = f" (redirected from {url})" if where != url else ""
            raise InvalidInput(f"refused to fetch {where}{via}: {exc.__cause__}") from None
        raise InvalidInput(f"cannot fetch {url} ({type(exc).__name__}: {exc})") from None
    return Download(b"".join(chunks), dict(response.headers), str(response.url))


def read_file(path: Path, *, fix: str, max_bytes: int = MAX_FEED_BYTES) -> bytes:
    """The bytes of a local feed or article file, refused past `max_bytes` without reading
    the rest; InvalidInput says what went wrong, then `fix`."""
    try:
        with path.open("rb") as fp:
            data = fp.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path} ({exc.strerror}); {fix}") from None
    if len(data) > max_bytes:
        raise InvalidInput(f"{path} is larger than {max_bytes // 2**20} MB (the limit for a feed); {fix}")
    return data
