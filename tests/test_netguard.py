"""The network guard's decisions, with resolver stand-ins: nothing here touches the network.

What a download may reach (issue 10): a public address, in the one spelling people write,
every address a name resolves to checked, plus what the operator allowed explicitly.
"""

from __future__ import annotations

import ipaddress
import threading
import time

import pytest

from handler_cli.config import ConfigError
from handler_cli.netguard import Allowance, NetGuard, Refused, check_url, refusal

FAR = time.monotonic() + 3600  # a deadline nobody reaches


class Resolver:
    """Answers from a table and remembers every question."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError("Name or service not known")
        return self.table[host]


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.9", "::1",  # loopback
    "10.0.0.1", "172.16.5.4", "172.31.255.255", "192.168.1.1", "fc00::1", "fd12:3456::1",
    "169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254",  # link-local, metadata
    "224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::1",  # multicast
    "0.0.0.0", "::",  # unspecified
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "2002:7f00:1::", "2002:a00:1::",  # 6to4 around loopback and 10/8
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo around 127.0.0.1
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 around loopback and metadata
    "::127.0.0.1",  # IPv4-compatible
    "100.64.0.1", "192.0.0.1", "198.18.0.1", "192.0.2.1", "2001:db8::1",  # shared, test nets
    "240.0.0.1", "255.255.255.255",  # reserved, broadcast
])
def test_internal_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", [
    "93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:93.184.215.14", "64:ff9b::808:808",
])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("url", "reason"), [
    ("http://2130706433/x.png", "forme non standard"),
    ("http://0x7f000001/x.png", "forme non standard"),
    ("http://127.1/x.png", "forme non standard"),
    ("http://0177.0.0.1/x.png", "forme non standard"),
    ("http://0x7f.0.0.1/x.png", "forme non standard"),
    ("http://017700000001/x.png", "forme non standard"),
    ("http://user@127.0.0.1/x.png", "identifiants"),
    ("http://user:pw@example.com/x.png", "identifiants"),
    ("http://@example.com/x.png", "identifiants"),
    ("ftp://example.com/x.png", "non prise en charge"),
    ("http:///x.png", "sans hôte"),
    ("http://[::1/x.png", "mal formée"),
    ("http://[fe80::1%25eth0]/x.png", "IPv6 invalide"),
    ("http://exa mple.com/x.png", "nom d'hôte invalide"),
    ("http://example.123/x.png", "nom d'hôte invalide"),
])
def test_spellings_no_person_writes_are_refused_before_any_lookup(url: str, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        check_url(url)


def test_a_url_is_split_for_the_connection() -> None:
    target = check_url("HTTPS://Fichiers.Example.COM:8443/a/b.png?x=1#frag")
    assert (target.scheme, target.host, target.port, target.target) == (
        "https", "fichiers.example.com", 8443, "/a/b.png?x=1")
    assert target.host_header == "fichiers.example.com:8443"
    v6 = check_url("http://[2606:4700::1111]/x.png")
    assert (v6.host, v6.host_header) == ("2606:4700::1111", "[2606:4700::1111]")
    assert check_url("https://café.example/x.png").host == "xn--caf-dma.example"
    assert str(check_url("http://127.0.0.1./x.png").literal) == "127.0.0.1"  # then checked


def test_every_address_of_a_name_is_checked_with_one_lookup() -> None:
    resolver = Resolver({"cdn.example.com": ["93.184.215.14", "10.0.0.7"],
                         "ok.example.com": ["93.184.215.14", "2606:4700::1111"]})
    guard = NetGuard(resolver=resolver)
    with pytest.raises(Refused, match=r"cdn.example.com → 10.0.0.7 : réseau privé"):
        guard.resolve("cdn.example.com", 443, FAR)
    assert guard.resolve("ok.example.com", 443, FAR) == ["93.184.215.14", "2606:4700::1111"]
    assert resolver.asked == ["cdn.example.com", "ok.example.com"]


@pytest.mark.parametrize(("name", "answer"), [
    ("localhost", "127.0.0.1"),
    ("metadata.google.internal", "169.254.169.254"),
    ("rebind.example.com", "::ffff:7f00:1"),
    ("lan.example.com", "192.168.0.10"),
])
def test_a_name_resolving_inside_is_refused(name: str, answer: str) -> None:
    with pytest.raises(Refused, match="adresse interne refusée"):
        NetGuard(resolver=Resolver({name: [answer]})).resolve(name, 80, FAR)


def test_unknown_names_and_empty_answers_are_refused() -> None:
    guard = NetGuard(resolver=Resolver({"empty.example.com": []}))
    with pytest.raises(Refused, match="introuvable"):
        guard.resolve("nowhere.example.com", 80, FAR)
    with pytest.raises(Refused, match="introuvable"):
        guard.resolve("empty.example.com", 80, FAR)


def test_a_lookup_that_hangs_costs_the_deadline_not_the_worker() -> None:
    release = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        release.wait(10)
        return ["93.184.215.14"]

    try:
        with pytest.raises(Refused, match="trop lente"):
            NetGuard(resolver=hanging).resolve("slow.example.com", 80, time.monotonic() + 0.2)
    finally:
        release.set()


def test_the_operator_allows_internal_hosts_by_name_or_network() -> None:
    allowance = Allowance.parse("files.intra, 10.1.0.0/16 127.0.0.1")
    resolver = Resolver({"files.intra": ["10.9.9.9"], "nas.intra": ["10.1.2.3"],
                         "other.intra": ["10.2.0.1"], "mixed.intra": ["10.1.2.3", "10.2.0.1"]})
    guard = NetGuard(allowance=allowance, resolver=resolver)
    assert guard.resolve("files.intra", 80, FAR) == ["10.9.9.9"]  # the name is allowed
    assert guard.resolve("nas.intra", 80, FAR) == ["10.1.2.3"]  # the network is
    assert guard.resolve("127.0.0.1", 80, FAR) == ["127.0.0.1"]
    for refused in ("other.intra", "mixed.intra", "::1"):
        with pytest.raises(Refused):
            guard.resolve(refused, 80, FAR)


def test_the_allowance_never_admits_a_non_standard_spelling() -> None:
    # Allowing 127.0.0.1 allows that address, written as people write it.
    Allowance.parse("127.0.0.0/8")
    with pytest.raises(Refused, match="forme non standard"):
        check_url("http://2130706433/x.png")


def test_a_bad_allow_entry_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="HANDLER_DOWNLOAD_ALLOW"):
        Allowance.parse("files.intra 10.0.0.0/33x")


def test_a_bad_allow_setting_stops_at_start() -> None:
    from handler_cli.config import load_settings

    with pytest.raises(ConfigError, match=r"HANDLER_DOWNLOAD_ALLOW: '10.0.0.0/33x' is neither"):
        load_settings(environ={"HANDLER_DOWNLOAD_ALLOW": "files.intra 10.0.0.0/33x"})


def test_the_request_line_is_percent_encoded_like_a_browser_would() -> None:
    assert check_url("http://example.com/mon vase é.png?a=1 2").target == (
        "/mon%20vase%20%C3%A9.png?a=1%202")
    assert check_url("http://example.com/d%C3%A9j%C3%A0.png").target == "/d%C3%A9j%C3%A0.png"
