"""A loopback HTTP server serving attachments the way hostile or broken hosts do.

Paths: `/photo.png` (a small file), `/big.png` (announces 1 GB), `/endless.png` (chunked,
never ends), `/trickle.png` (one byte at a time, slowly), `/stall.png` (headers, then
nothing), `/silent.png` (never answers), `/redirect?to=URL`, `/loop.png` (redirects to
itself). Every request is recorded with its Host header, and the bytes each one was sent.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PHOTO = b"\x89PNG\r\n\x1a\n" + b"png-bytes" * 10


@dataclass
class Seen:
    path: str
    host: str
    sent: int = 0


@dataclass
class FilePeer:
    port: int
    scheme: str = "http"
    seen: list[Seen] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)  # TLS SNI, when https
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


def _handler(peer: FilePeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            seen = Seen(self.path, self.headers.get("Host", ""))
            peer.seen.append(seen)
            path = urlsplit(self.path).path
            try:
                if path == "/photo.png":
                    self._send(200, PHOTO)
                elif path == "/big.png":
                    self.send_response(200)
                    self.send_header("Content-Length", str(10**9))
                    self.end_headers()
                elif path == "/endless.png":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    chunk = b"x" * 4096
                    while not peer.stop.is_set():
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        seen.sent += len(chunk)
                elif path == "/trickle.png":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    while not peer.stop.is_set() and seen.sent < 100000:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        seen.sent += 1
                        time.sleep(0.02)
                elif path == "/stall.png":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.flush()
                    peer.stop.wait(30)
                elif path == "/silent.png":
                    peer.stop.wait(30)
                elif path == "/redirect":
                    target = parse_qs(urlsplit(self.path).query)["to"][0]
                    self._send(302, b"", location=target)
                elif path == "/loop.png":
                    self._send(302, b"", location="/loop.png")
                else:
                    self._send(404, b"")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up: what a budget is for

        def _send(self, status: int, body: bytes, location: str | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if location:
                self.send_header("Location", location)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def file_peer(tls: ssl.SSLContext | None = None) -> Iterator[FilePeer]:
    """The server on 127.0.0.1 (https with `tls`, a server context), a port chosen by the OS."""
    peer = FilePeer(0, "https" if tls else "http")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(peer))
    server.daemon_threads = True
    if tls is not None:
        tls.sni_callback = lambda sock, name, ctx: peer.server_names.append(name)  # type: ignore[assignment]
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    peer.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        peer.stop.set()
        server.shutdown()
        server.server_close()
