"""A real HTTP server on 127.0.0.1 for feed tests: files with ETags, redirects, a feed that
drips a byte at a time, and a feed that holds its answer until the test releases it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FeedServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}  # path -> Location
        self.drip: dict[str, bytes] = {}  # path -> body sent one byte every 0.1 s
        self.held: dict[str, bytes] = {}  # path -> body sent once `release` is set
        self.requested: dict[str, int] = {}  # path -> requests seen
        self.not_modified = 0
        self.arrived = threading.Event()  # a request for a held path came in
        self.release = threading.Event()  # let held answers (and drips) go
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requested[self.path] = server.requested.get(self.path, 0) + 1
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path in server.held:
                    server.arrived.set()
                    if not (server.release.wait(120) and not server.stopping.is_set()):
                        return
                    body = server.held[self.path]
                elif self.path in server.drip:
                    self._drip(server.drip[self.path])
                    return
                else:
                    body = server.files.get(self.path, b"")
                    if self.path not in server.files:
                        self.send_error(404)
                        return
                etag = f'"{hash(body) & 0xFFFFFFFF:x}"'
                if self.headers.get("If-None-Match") == etag:
                    server.not_modified += 1
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _drip(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(len(body)):  # a slow server, as the attacker's: bounded by the body
                    if server.stopping.is_set():
                        return
                    try:
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.1)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"


@contextmanager
def running_feed_server() -> Iterator[FeedServer]:
    """A FeedServer in a thread; stopped (held and dripping answers cut) on exit."""
    server = FeedServer()
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.release.set()
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join(timeout=5)
