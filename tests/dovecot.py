"""A real IMAP server on loopback for the IMAP reply source: Debian's dovecot, our own instance.

Each `dovecot_server()` starts `dovecot -F` (in the foreground, not as a daemon) with a
minimal configuration: plaintext login allowed on loopback, implicit TLS on a second port
and STARTTLS on the first (with the tests' self-signed certificate), one passwd-file user,
a maildir. It skips the test, saying why, when the dovecot binary is absent
(CI: `apt-get install -y --no-install-recommends dovecot-imapd`).

Dovecot refuses to give mail access to root, so when the tests run as root the instance runs
as the `dovecot` system user in a private temporary folder it can reach (pytest's tmp tree
is root-only); otherwise it runs as the current user under `tmp_path`.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, free_port, peer_cert

DOVECOT_PATHS = ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot")

CONFIG = """\
protocols = imap
listen = {host}
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
ssl = yes
ssl_cert = <{base}/cert.pem
ssl_key = <{base}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login{oauth2_mechanisms}
auth_failure_delay = 0
first_valid_uid = 1
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {base}/users
}}
{oauth2_passdb}userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/mail/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {host}
    port = {port}
  }}
  inet_listener imaps {{
    address = {host}
    port = {ssl_port}
  }}
}}
service anvil {{
  chroot =
}}
"""


# Dovecot 2.3's oauth2 passdb (doc.dovecot.org/2.3, "Open Authentication v2.0 database", read
# 2026-11-29): the bearer token of an XOAUTH2/OAUTHBEARER login is POSTed as `token=...` to the
# introspection URL, whose JSON answer must be active and name the user logging in.
OAUTH2_PASSDB = """\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {base}/dovecot-oauth2.conf.ext
}}
"""
OAUTH2_CONFIG = """\
introspection_mode = post
introspection_url = {url}
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
"""


def dovecot_binary() -> str | None:
    found = shutil.which("dovecot")
    if found:
        return found
    return next((p for p in DOVECOT_PATHS if Path(p).is_file()), None)


@dataclass(frozen=True)
class Dovecot:
    host: str
    port: int  # plain IMAP, STARTTLS offered
    ssl_port: int  # implicit TLS
    user: str
    password: str
    base: Path

    def environ(self, **extra: str) -> dict[str, str]:
        """The IMAP_* settings for this server (no TLS unless `extra` says otherwise)."""
        env = {"IMAP_HOST": self.host, "IMAP_PORT": str(self.port), "IMAP_USER": self.user,
               "IMAP_PASSWORD": self.password, "IMAP_SECURITY": "none"}
        env.update(extra)
        return env

    @contextmanager
    def client(self) -> Iterator[imaplib.IMAP4]:
        imap = imaplib.IMAP4(self.host, self.port, timeout=10)
        try:
            imap.login(self.user, self.password)
            yield imap
        finally:
            imap.logout()

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        """Put a message in the mailbox, unread, as a delivery would."""
        with self.client() as imap:
            if folder != "INBOX":
                imap.create(f'"{folder}"')
            status, data = imap.append(f'"{folder}"', None, None, raw)
            assert status == "OK", data

    def flags(self, folder: str = "INBOX") -> list[bytes]:
        with self.client() as imap:
            imap.select(f'"{folder}"', readonly=True)
            status, data = imap.fetch("1:*", "(FLAGS)")
            return [d for d in data if isinstance(d, bytes)]

    def log(self) -> str:
        path = self.base / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _wait_ready(host: str, port: int, proc: subprocess.Popen[bytes], base: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (base / "dovecot.log").read_text(errors="replace") if (
                base / "dovecot.log").exists() else ""
            raise RuntimeError(f"dovecot exited ({proc.returncode}): {log[-2000:]}")
        try:
            imap = imaplib.IMAP4(host, port, timeout=2)
        except (OSError, imaplib.IMAP4.error):
            time.sleep(0.05)
            continue
        imap.logout()
        return
    raise RuntimeError("dovecot did not answer within 15 s")


@contextmanager
def dovecot_server(tmp_path: Path, password: str = "s3cret-pass",
                   introspection_url: str | None = None) -> Iterator[Dovecot]:
    """Dovecot on loopback; with `introspection_url`, XOAUTH2 logins too, their bearer token
    checked by dovecot's oauth2 passdb against that URL (see `tests/oauth2_server.py`)."""
    binary = dovecot_binary()
    if binary is None:
        pytest.skip("dovecot is not installed (apt-get install -y dovecot-imapd): "
                    "the IMAP reply source is tested against a real IMAP server")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            account = pwd.getpwnam("dovecot")
        except KeyError:
            pytest.skip("running as root needs the 'dovecot' system user (dovecot-core)")
        base = Path(tempfile.mkdtemp(prefix="handler-dovecot-"))
    else:
        account = pwd.getpwuid(os.getuid())
        base = tmp_path / "dovecot"
    for sub in ("run", "state", "mail"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    cert = peer_cert()
    shutil.copyfile(cert.cert_path, base / "cert.pem")
    shutil.copyfile(cert.key_path, base / "key.pem")
    user = "team@studio.example"
    (base / "users").write_text(f"{user}:{{PLAIN}}{password}\n")
    port, ssl_port = free_port(), free_port()
    group = account.pw_name
    if introspection_url:
        (base / "dovecot-oauth2.conf.ext").write_text(OAUTH2_CONFIG.format(url=introspection_url))
    (base / "dovecot.conf").write_text(CONFIG.format(
        host=LOOPBACK, base=base, user=account.pw_name, group=group, uid=account.pw_uid,
        gid=account.pw_gid, port=port, ssl_port=ssl_port,
        oauth2_mechanisms=" xoauth2 oauthbearer" if introspection_url else "",
        oauth2_passdb=OAUTH2_PASSDB.format(base=base) if introspection_url else "",
    ))
    if as_root:
        for path in [base, *base.rglob("*")]:
            os.chown(path, account.pw_uid, account.pw_gid)
        base.chmod(0o700)
    proc = subprocess.Popen(
        [binary, "-F", "-c", str(base / "dovecot.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        user=account.pw_uid if as_root else None, group=account.pw_gid if as_root else None,
    )
    try:
        _wait_ready(LOOPBACK, port, proc, base)
        yield Dovecot(LOOPBACK, port, ssl_port, user, password, base)
    finally:
        # The whole process group at once: a graceful stop waits a second for its children.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if as_root:
            shutil.rmtree(base, ignore_errors=True)
