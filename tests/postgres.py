"""A real PostgreSQL on loopback for the shared storage: Debian's server binaries, our own cluster.

`postgres_cluster()` runs `initdb` and `pg_ctl start` in a temporary folder, listening on a
free loopback port (and a unix socket in that folder), with fsync off (a test cluster: a
commit survives a stop of the server, not of the machine); the cluster can be stopped and
started again (a database outage). initdb and postgres refuse to run as root, so when the
tests run as root the cluster is made and run as the `postgres` system user (or `nobody`),
in a temporary folder that user owns. Without the binaries the test is skipped, saying why,
locally; CI installs them (`.ci/run`: postgresql). Each test gets a database of its own in
the session's cluster from `pg_url`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, free_port

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
_DATABASES = itertools.count(1)


def postgres_bin() -> Path | None:
    for folder in BIN_DIRS:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


def _account() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid())
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return None


class PostgresCluster:
    """A cluster of our own in a temporary folder, on a fixed loopback port: `start()`,
    `stop()` (immediate, as a crash or a failover looks to clients) and `start()` again."""

    def __init__(self, binaries: Path, account: pwd.struct_passwd) -> None:
        self.binaries = binaries
        self.base = Path(tempfile.mkdtemp(prefix="handler-pg-"))
        as_other = account.pw_uid != os.geteuid()
        if as_other:
            os.chown(self.base, account.pw_uid, account.pw_gid)
        self.base.chmod(0o700)
        self.user: dict[str, int] = (
            dict(user=account.pw_uid, group=account.pw_gid) if as_other else {})
        self.data = self.base / "data"
        self.port = free_port()
        self.log = self.base / "postgres.log"
        self.url = f"postgresql://handler@{LOOPBACK}:{self.port}/postgres"
        subprocess.run([str(binaries / "initdb"), "-D", str(self.data), "-U", "handler",
                        "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       **self.user)

    def start(self) -> None:
        options = (f"-c listen_addresses={LOOPBACK} -p {self.port} -k {self.base} -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200")
        started = subprocess.run(
            [str(self.binaries / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o",
             options, "-w", "-t", "30", "start"], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, **self.user)
        if started.returncode != 0:
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr!r} {text[-2000:]}")

    def stop(self) -> None:
        subprocess.run([str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                        "-w", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       **self.user)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A fresh, started cluster (user `handler`, trust), removed afterwards."""
    binaries = postgres_bin()
    if binaries is None:
        if os.environ.get("TESTS_REQUIRE_POSTGRES"):  # CI: a skip would hide a missing install
            pytest.fail("TESTS_REQUIRE_POSTGRES is set but no PostgreSQL binaries were found")
        pytest.skip("PostgreSQL server binaries not found (Debian/Ubuntu: apt-get install "
                    "postgresql): the shared storage is tested against a real PostgreSQL")
    account = _account()
    if account is None:
        pytest.skip("running as root needs the 'postgres' (or 'nobody') user for initdb")
    cluster = PostgresCluster(binaries, account)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh cluster; yields the URL of its `postgres` database (user `handler`, trust)."""
    with postgres_cluster() as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def pg_session() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def pg_url(pg_session: str) -> Iterator[str]:
    """A database of this test's own in the session's cluster."""
    import psycopg

    name = f"test_{os.getpid()}_{next(_DATABASES)}"
    with psycopg.connect(pg_session, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield pg_session.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(pg_session, autocommit=True) as admin:
        for _ in range(50):  # wait for the test's own connections to go
            busy = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                 (name,)).fetchone()
            if not busy or not busy[0]:
                break
            time.sleep(0.1)
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
