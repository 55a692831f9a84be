"""Real network endpoints on 127.0.0.1 for the notification tests: an HTTP server that records
what it is sent (and can answer slowly or with an error), a port that accepts connections and
never answers, a port that refuses them, an SMTP server (aiosmtpd), and a forward HTTP proxy;
and for the offsite tests a recording reverse proxy in front of the S3 server, which keeps every
request (method, path, body) it passed on: what the provider was sent, byte for byte.

Every server binds to loopback only, answers a bounded number of requests, and is stopped by
its fixture; a slow answer waits at most ``SLOW_LIMIT`` seconds, less when the test ends.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

#: The longest a "slow" endpoint holds a request (the stop event cuts it short).
SLOW_LIMIT = 30.0


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpSink:
    """A recording HTTP server; ``status`` and ``delay`` shape its answers."""

    server: ThreadingHTTPServer
    requests: list[Seen] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Seen]:
        """Wait (bounded) until ``count`` requests arrived; return them."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)
        return list(self.requests)


def _handler(sink_box: list[HttpSink]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            sink = sink_box[0]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with sink.arrived:
                sink.requests.append(
                    Seen(self.command, self.path, dict(self.headers.items()), body)
                )
                sink.arrived.notify_all()
            if sink.delay:
                sink.stop.wait(min(sink.delay, SLOW_LIMIT))
            payload = b"OK"
            with contextlib.suppress(OSError):
                self.send_response(sink.status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextlib.contextmanager
def _serving(
    handler: Callable[[list[HttpSink]], type[BaseHTTPRequestHandler]],
) -> Iterator[HttpSink]:
    """A server on 127.0.0.1 with ``handler(box)`` answering (``box[0]`` is the sink that
    records), in a thread of its own; stopped on exit."""
    box: list[HttpSink] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(box))
    server.daemon_threads = True
    sink = HttpSink(server)
    box.append(sink)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield sink
    finally:
        sink.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def http_sink() -> Iterator[HttpSink]:
    """A recording HTTP server on 127.0.0.1, stopped on exit."""
    with _serving(_handler) as sink:
        yield sink


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port whose connections are accepted by the kernel and never answered (a hung server)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def refused_port() -> int:
    """A port nothing listens on (connections are refused)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


@dataclass
class MailSink:
    """Messages an SMTP server on 127.0.0.1 accepted."""

    port: int
    messages: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(
        self, count: int, timeout: float = 10.0
    ) -> list[tuple[str, list[str], EmailMessage]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.messages) >= count, timeout)
        return list(self.messages)


@contextlib.contextmanager
def smtp_sink() -> Iterator[MailSink]:
    """An aiosmtpd server on 127.0.0.1 that keeps every message, stopped on exit."""
    from aiosmtpd.controller import Controller

    sink = MailSink(refused_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            parsed = message_from_bytes(envelope.content, policy=policy.default)
            assert isinstance(parsed, EmailMessage)
            with sink.arrived:
                sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
                sink.arrived.notify_all()
            return "250 Message accepted for delivery"

    controller = Controller(Handler(), hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@contextlib.contextmanager
def forward_proxy() -> Iterator[HttpSink]:
    """An HTTP proxy that answers every request itself (200) and records the absolute URL it
    was asked for: proof that a client went through the proxy, with no outside network."""
    with http_sink() as sink:
        yield sink


#: Headers about one hop of the connection, not the request: never forwarded.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection"}


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, as Content-Length or chunked transfer encoding frames it."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


@contextlib.contextmanager
def recording_proxy(upstream: str) -> Iterator[HttpSink]:
    """A reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``) that
    records every request it forwards, body included (``sink.base`` is its address).

    The Host header goes through unchanged, so S3 signatures made for the proxy's address
    still verify upstream. Bodies are held in memory: for small test objects only.
    """
    target = urlsplit(upstream)

    def proxy(box: list[HttpSink]) -> type[BaseHTTPRequestHandler]:
        return _proxy_handler(box, target.hostname or "127.0.0.1", target.port or 80)

    with _serving(proxy) as sink:
        yield sink


def _proxy_handler(box: list[HttpSink], host: str, port: int) -> type[BaseHTTPRequestHandler]:
    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            sink = box[0]
            body = _read_body(self)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            with sink.arrived:
                sink.requests.append(Seen(self.command, self.path, dict(headers), body))
                sink.arrived.notify_all()
            upstream_conn = http.client.HTTPConnection(host, port, timeout=60)
            try:
                upstream_conn.putrequest(
                    self.command, self.path, skip_host=True, skip_accept_encoding=True
                )
                for key, value in headers.items():
                    upstream_conn.putheader(key, value)
                upstream_conn.endheaders(body or None)
                answer = upstream_conn.getresponse()
                payload = answer.read()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                length = answer.getheader("Content-Length")
                if self.command == "HEAD" and length is not None:
                    self.send_header("Content-Length", length)
                else:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
            finally:
                upstream_conn.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Proxy
