"""Real peers on loopback for the live backends: an aiosmtpd SMTP server and a moto S3 server.

Use the context managers (`smtp_server(...)`, `s3_server()`) for variants, or the pytest
fixtures `smtp_peer` / `s3_peer` for the plain case. Import fixtures explicitly in a test
module (`from tests.peers import smtp_peer`) since they do not live in conftest.py; `s3_peer`
needs its session-wide server too: `from tests.peers import s3_peer, s3_server_session`.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import ipaddress
import json
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from handler_cli.checks import Finding

if TYPE_CHECKING:
    from tests.oauth2_server import OAuth2Server

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nobody listens on right now (for servers that cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A loopback port where the connection is refused at once: a peer that is down."""
    return free_port()


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` served on a loopback port in a thread, for the time of the block: its URL."""
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


# -- TLS -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerCert:
    """A self-signed certificate for 127.0.0.1 and localhost, with its key, on disk."""

    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context (hostname and chain checked) that trusts this cert."""
        return ssl.create_default_context(cafile=str(self.cert_path))


@functools.cache
def peer_cert() -> PeerCert:
    """Made once per test process with `cryptography` (an EC key: fast to generate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "handler-cli test peer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = Path(tempfile.mkdtemp(prefix="handler-test-cert-"))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return PeerCert(cert_path, key_path)


# -- SMTP ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMail:
    """One message as the SMTP server accepted it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: tuple[str, ...] = ()  # e.g. SMTPUTF8, BODY=8BITMIME

    @property
    def message(self) -> EmailMessage:
        return BytesParser(policy=policy.default).parsebytes(self.data)  # type: ignore[return-value]


@dataclass
class SMTPPeer:
    """A running aiosmtpd server. Set `rcpt_reply` / `data_reply` (e.g. "550 5.1.1 unknown")
    to make it refuse recipients or the message, `mail_reply` to refuse the sender, like a
    real relay would; `deliver` to hand each accepted message on (to a mailbox)."""

    host: str
    port: int
    security: Literal["none", "starttls", "ssl"]
    received: list[ReceivedMail] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    mechanisms: list[str] = field(default_factory=list)  # AUTH mechanism of each login
    commands: list[str] = field(default_factory=list)  # MAIL/RCPT/RSET/DATA, in order
    rcpt_reply: str | None = None
    data_reply: str | None = None
    mail_reply: str | None = None
    deliver: Callable[[ReceivedMail], None] | None = None

    def client_context(self) -> ssl.SSLContext:
        """The verifying SSL context a client needs to trust this server's certificate."""
        return peer_cert().client_context()

    def settings(self, **extra: Any) -> dict[str, Any]:
        """Settings fields pointing at this server (pass to `Settings(**...)`)."""
        return {"smtp_host": self.host, "smtp_port": self.port,
                "smtp_security": self.security, "smtp_timeout": 5.0, **extra}

    def environ(self, **extra: str) -> dict[str, str]:
        """The SMTP_* variables pointing at this server."""
        return {"SMTP_HOST": self.host, "SMTP_PORT": str(self.port),
                "SMTP_SECURITY": self.security, "SMTP_TIMEOUT": "5", **extra}


class _Handler:
    """aiosmtpd hooks: record what arrives, or answer with the reply the test chose."""

    def __init__(self, peer: SMTPPeer) -> None:
        self.peer = peer

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        self.peer.commands.append(f"MAIL {address}")
        if self.peer.mail_reply:
            return self.peer.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        self.peer.commands.append(f"RCPT {address}")
        if self.peer.rcpt_reply:
            return self.peer.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_RSET(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        self.peer.commands.append("RSET")
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        self.peer.commands.append("DATA")
        if self.peer.data_reply:
            return self.peer.data_reply
        mail = ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content),
                            tuple(envelope.mail_options))
        self.peer.received.append(mail)
        if self.peer.deliver is not None:
            self.peer.deliver(mail)
        return "250 Message accepted for delivery"


class _OAuth2Handler(_Handler):
    """Adds SASL XOAUTH2 as Google and Microsoft speak it: the initial response
    `user=...^Aauth=Bearer ...^A^A`, checked against the loopback authorization server; on
    failure a 334 challenge carrying a JSON status, an empty answer, then 535."""

    def __init__(self, peer: SMTPPeer, oauth2: OAuth2Server, scope: str | None) -> None:
        super().__init__(peer)
        self.oauth2 = oauth2
        self.scope = scope

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> Any:  # noqa: N802
        from aiosmtpd.smtp import MISSING, AuthResult

        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except ValueError:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        fields = dict(part.split("=", 1) for part in blob.decode().split("\x01") if "=" in part)
        user, auth = fields.get("user", ""), fields.get("auth", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        if token and self.oauth2.valid(token, user, self.scope):
            self.peer.logins.append(user)
            self.peer.mechanisms.append("XOAUTH2")
            return AuthResult(success=True, auth_data=user)
        status = {"status": "401", "schemes": "Bearer", "scope": self.scope or ""}
        await server.challenge_auth(json.dumps(status))
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Username and Password not accepted")


@contextmanager
def smtp_server(
    *,
    users: dict[str, str] | None = None,
    security: Literal["none", "starttls", "ssl"] = "none",
    auth_require_tls: bool = False,
    oauth2: OAuth2Server | None = None,
    oauth2_scope: str | None = None,
    smtputf8: bool = False,
) -> Iterator[SMTPPeer]:
    """An aiosmtpd server on 127.0.0.1; `users` enables AUTH PLAIN/LOGIN with these logins,
    `oauth2` AUTH XOAUTH2 with tokens of that server (carrying `oauth2_scope`, if given).

    `security="starttls"` offers (and requires) STARTTLS, `"ssl"` speaks TLS from the first
    byte; both use the self-signed `peer_cert()` that `SMTPPeer.client_context()` trusts.
    `smtputf8` offers the SMTPUTF8 extension (RFC 6531); aiosmtpd's default is not to.
    """
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    peer = SMTPPeer(LOOPBACK, free_port(), security)

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword) and users:
            login = auth_data.login.decode()
            if users.get(login) == auth_data.password.decode():
                peer.logins.append(login)
                peer.mechanisms.append(mechanism)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
    if users is not None or oauth2 is not None:
        kwargs.update(authenticator=authenticator, auth_require_tls=auth_require_tls)
    if security == "starttls":
        kwargs.update(tls_context=peer_cert().server_context(), require_starttls=True)
    elif security == "ssl":
        kwargs.update(ssl_context=peer_cert().server_context())
    handler = _Handler(peer) if oauth2 is None else _OAuth2Handler(peer, oauth2, oauth2_scope)
    controller = Controller(
        handler, hostname=LOOPBACK, port=peer.port, server_hostname="mx.test", **kwargs
    )
    controller.start()
    try:
        yield peer
    finally:
        controller.stop()


@pytest.fixture
def smtp_peer() -> Iterator[SMTPPeer]:
    """A plain (no TLS, no AUTH) SMTP server on loopback that records what it receives."""
    with smtp_server() as peer:
        yield peer


# -- S3 (moto) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Peer:
    """A running moto S3 server; any access key is accepted."""

    endpoint_url: str
    access_key_id: str = "test-access-key"
    secret_access_key: str = "test-secret-key"

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def settings(self, bucket: str, **extra: Any) -> dict[str, Any]:
        """Settings fields for the R2 store pointing at this server (pass to `Settings`)."""
        return {"r2_endpoint_url": self.endpoint_url, "r2_bucket": bucket,
                "r2_access_key_id": self.access_key_id,
                "r2_secret_access_key": self.secret_access_key, **extra}

    def reset(self) -> None:
        """Forget every bucket (moto's state is shared by all servers in the process)."""
        import httpx

        httpx.post(f"{self.endpoint_url}/moto-api/reset", timeout=5.0).raise_for_status()


@contextmanager
def s3_server() -> Iterator[S3Peer]:
    """moto's S3 in server mode on 127.0.0.1, a port chosen by the OS, empty at start."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    peer = S3Peer(f"http://{host}:{port}")
    try:
        peer.reset()
        yield peer
    finally:
        try:
            peer.reset()
        finally:
            server.stop()


@pytest.fixture(scope="session")
def s3_server_session() -> Iterator[S3Peer]:
    """One moto server for the whole run (stopping one costs half a second)."""
    with s3_server() as peer:
        yield peer


@pytest.fixture
def s3_peer(
    s3_server_session: S3Peer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[S3Peer]:
    """An empty moto S3 server; boto3 is kept away from ~/.aws and the real AWS env.

    A module that uses it must import both `s3_peer` and `s3_server_session`.
    """
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    s3_server_session.reset()
    yield s3_server_session
    s3_server_session.reset()


def lines(findings: list[Finding]) -> str:
    """A backend's `check()` findings as the text `doctor --check` prints, for assertions."""
    return "\n".join(str(f) for f in findings)
