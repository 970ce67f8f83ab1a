"""The network guard: a client-given URL is fetched from a public address only (issue 10).

A web form can name any URL as an attachment, so without a guard the server would fetch its
own network for a stranger (loopback, the LAN, the cloud metadata address) and hand the
content back as a file link. Every connection a download makes goes through `GuardedBackend`
(an httpcore network backend, the documented seam for "non-standard DNS requirements",
httpcore 1.0 docs, "Network Backends", read 2026-11): the host is resolved once, every
address it resolves to is checked, and the socket connects to a checked address, so a DNS
answer that changes between the check and the connection (rebinding) changes nothing.
Redirects open new connections, so they pass the same check. Each socket operation is also
bounded by the file's deadline, so a server trickling one byte a second cannot hold a worker.

Before any resolution, `check_url` refuses what only an attacker writes: credentials in the
URL (`user@127.0.0.1`), and IP addresses spelled the way `inet_aton` reads but no person
does (`2130706433`, `0x7f000001`, `127.1`, `0177.0.0.1`).

An operator who really needs an internal host allows it by name or network in
HANDLER_DOWNLOAD_ALLOW (docs/production.md, "Threat model").
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, urlsplit

from handler_cli.config import ConfigError

if TYPE_CHECKING:
    import ssl

    import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses it resolves to, as strings. Tests give stand-ins.
Resolver = Callable[[str, int], Sequence[str]]

# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64, RFC 6052 / 8215).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# What inet_aton would read as an address: numbers, hex or octal, one to four parts.
_NUMERIC_HOST = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?$")
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
# Lookups run on these threads, so a resolver that hangs costs the download its deadline,
# not the worker: at most this many hung lookups at once, then the others time out.
_LOOKUPS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolve")


class Refused(Exception):
    """This URL may not be fetched; the message (French) goes into the request's notes."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolves `host` to, in its order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address (French), or None when it is.

    `is_global` alone is not enough on Python 3.11 (multicast and 6to4 count as global
    there), so each kind is refused explicitly, and an IPv6 address that carries an IPv4
    one (mapped ::ffff:a.b.c.d, 6to4, Teredo, NAT64) is judged by that IPv4 address too."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return refusal(ip.ipv4_mapped)
        if any(ip in net for net in _NAT64) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
            return refusal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and (reason := refusal(embedded)):
            return reason
    if ip.is_loopback:
        return "boucle locale (loopback)"
    if ip.is_unspecified:
        return "adresse non spécifiée"
    if ip.is_link_local:
        return "lien local, dont les métadonnées du cloud"
    if ip.is_multicast:
        return "multidiffusion"
    if ip.is_private or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return "réseau privé"
    if ip.is_reserved or not ip.is_global:
        return "adresse réservée ou non publique"
    return None


@dataclass(frozen=True)
class Allowance:
    """Internal hosts an operator chose to allow (HANDLER_DOWNLOAD_ALLOW): names, whatever
    they resolve to, and networks, whatever name leads there."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> Allowance:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (text or "").replace(",", " ").split():
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                name = entry.lower().rstrip(".")
                if not all(_DNS_LABEL.match(label) for label in name.split(".")):
                    raise ConfigError(f"HANDLER_DOWNLOAD_ALLOW: {entry!r} is neither a host "
                                      "name nor an address or network (CIDR)") from None
                hosts.add(name)
        return cls(frozenset(hosts), tuple(networks))

    def covers(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.networks)


@dataclass(frozen=True)
class Target:
    """A URL that passed the static checks, split the way the connection needs it."""

    scheme: str  # "http" or "https"
    host: str  # lower-case ASCII name (IDNA), or an IP address without brackets
    port: int
    target: str  # path and query, what goes on the request line
    literal: IPAddress | None  # the host, when it is an IP address

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if isinstance(self.literal, ipaddress.IPv6Address) else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def check_url(url: str) -> Target:
    """The URL's parts, or Refused: not http(s), credentials in it, a host written as no
    person writes one. Says nothing yet about where the host leads (see `resolve`)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise Refused("adresse mal formée") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Refused(f"adresse non prise en charge ({scheme or '?'}://)")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise Refused("adresse avec identifiants (utilisateur@hôte) refusée")
    raw = parts.hostname or ""
    if not raw:
        raise Refused("adresse sans hôte")
    # Spaces and non-ASCII characters are percent-encoded, as a browser sends them; what
    # is already encoded stays as it is.
    target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                   safe="/?:@!$&'()*+,;=%~[]")
    port = port if port is not None else (443 if scheme == "https" else 80)
    if parts.netloc.rpartition("@")[2].startswith("["):
        try:
            literal: IPAddress = ipaddress.IPv6Address(raw)
        except ValueError:
            raise Refused("adresse IPv6 invalide") from None
        if "%" in raw:
            raise Refused("adresse IPv6 invalide")
        return Target(scheme, str(literal), port, target, literal)
    try:
        host = raw.encode("idna").decode("ascii").lower().rstrip(".")
    except UnicodeError:
        raise Refused("nom d'hôte invalide") from None
    try:
        literal = ipaddress.IPv4Address(host)  # strict: four decimal parts, no leading zeros
        return Target(scheme, host, port, target, literal)
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        raise Refused("adresse IP écrite sous une forme non standard")
    labels = host.split(".")
    if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels) \
            or labels[-1].isdigit():
        raise Refused("nom d'hôte invalide")
    return Target(scheme, host, port, target, None)


@dataclass
class NetGuard:
    """Where downloads may connect: public addresses, plus what the operator allowed."""

    allowance: Allowance = field(default_factory=Allowance)
    resolver: Resolver = system_resolver
    # None: the system's trust store as httpcore sets it up (certifi). Tests give their own.
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> NetGuard:
        return cls(allowance=Allowance.parse(settings.handler_download_allow), **overrides)

    def resolve(self, host: str, port: int, deadline: float) -> list[str]:
        """The checked addresses of `host` (one lookup, every answer checked), or Refused."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            answers = self._lookup(host, port, deadline)
            try:
                addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in answers]
            except ValueError:
                raise Refused(f"{host} : réponse DNS inattendue") from None
            if not addresses:
                raise Refused(f"{host} : nom introuvable")
            if host in self.allowance.hosts:
                return [str(a) for a in addresses]
        for address in addresses:
            if not self.allowance.covers(address) and (reason := refusal(address)):
                shown = host if literal is not None else f"{host} → {address}"
                raise Refused(f"adresse interne refusée ({shown} : {reason})")
        return [str(a) for a in addresses]

    def _lookup(self, host: str, port: int, deadline: float) -> Sequence[str]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Refused("délai de téléchargement dépassé")
        future = _LOOKUPS.submit(self.resolver, host, port)
        try:
            return future.result(timeout=left)
        except FutureTimeout:
            future.cancel()
            raise Refused(f"{host} : résolution DNS trop lente") from None
        except OSError:
            raise Refused(f"{host} : nom introuvable") from None

    def pool(self, deadline: float) -> httpcore.ConnectionPool:
        """A connection pool whose every connection is checked and bounded by `deadline`."""
        import httpcore

        backend = cast(httpcore.NetworkBackend, GuardedBackend(self, deadline))
        return httpcore.ConnectionPool(ssl_context=self.ssl_context, network_backend=backend,
                                       max_connections=1, retries=0)


def _left(deadline: float, timeout: float | None, operation: str) -> float:
    """The time an operation may take: its own timeout, cut to what the deadline leaves."""
    left = deadline - time.monotonic()
    if left <= 0:
        import httpcore

        error = {"read": httpcore.ReadTimeout, "write": httpcore.WriteTimeout}.get(
            operation, httpcore.ConnectTimeout)
        raise error("download deadline passed")
    return left if timeout is None else min(timeout, left)


# The two classes below implement httpcore's NetworkStream and NetworkBackend interfaces by
# their methods (httpcore calls them, it never checks their type), so that this module, and
# the settings that parse HANDLER_DOWNLOAD_ALLOW with it, import httpcore only to download.


class DeadlineStream:
    """A socket stream whose every operation ends by the download's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self.inner = inner
        self.deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _left(self.deadline, timeout, "read"))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _left(self.deadline, timeout, "write"))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> DeadlineStream:
        # httpcore passes the URL's name as server_hostname: SNI and the certificate check
        # are for the name, while the socket is connected to the checked address.
        self.inner = self.inner.start_tls(ssl_context, server_hostname=server_hostname,
                                          timeout=_left(self.deadline, timeout, "connect"))
        return self

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class GuardedBackend:
    """httpcore's network backend for one download: checked addresses, one deadline."""

    def __init__(self, guard: NetGuard, deadline: float) -> None:
        import httpcore

        self.guard = guard
        self.deadline = deadline
        self.system = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> DeadlineStream:
        import httpcore

        addresses = self.guard.resolve(host, port, self.deadline)
        error: Exception | None = None
        for address in addresses:  # every one checked; the first that answers
            try:
                stream = self.system.connect_tcp(
                    address, port, timeout=_left(self.deadline, timeout, "connect"),
                    local_address=local_address, socket_options=socket_options)
            except httpcore.ConnectError as exc:
                error = exc
                continue
            return DeadlineStream(stream, self.deadline)
        assert error is not None
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> DeadlineStream:
        raise Refused("socket locale refusée")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
