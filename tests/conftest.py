"""Fixtures shared by the whole test tree, one section per layer."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tuf_signer.keys import Pkcs11Backend
from tuf_signer.testing.softhsm import init_token, softhsm_module_path, write_softhsm_config

if TYPE_CHECKING:
    from tuf_signer.testing.fake_kms import FakeKms

# =====================================================================================
# SoftHSM (keys)
#
# SoftHSM reads SOFTHSM2_CONF once per process, at C_Initialize, and builds its
# slot list then. So the whole pytest process shares one configuration, set by
# the `softhsm` fixture before anything loads libsofthsm2: every test that
# touches PKCS#11 must depend on `softhsm` (directly or through
# `pkcs11_backend`). Tokens are created here, all at session start; a token
# created later is only seen after the library is re-initialised, which
# Pkcs11Backend.start does only while no session of the process is open. Need
# another token? Add its label to SOFTHSM_TOKENS.
# =====================================================================================

SOFTHSM_TOKENS = ("test", "test-2")
SOFTHSM_PIN = "1234"
SOFTHSM_SO_PIN = "5678"


@dataclass(frozen=True)
class SoftHsm:
    """The test process's SoftHSM: configuration, module and the main token.

    Attributes:
        conf: the SOFTHSM2_CONF in force for this process.
        module: path of libsofthsm2.so.
        token_label: the main token, "test".
        pin: user PIN of every token in SOFTHSM_TOKENS.
        so_pin: security officer PIN of every token in SOFTHSM_TOKENS.
        token_labels: every token created at session start.
    """

    conf: Path
    module: Path
    token_label: str
    pin: str
    so_pin: str
    token_labels: tuple[str, ...]

    def backend(
        self,
        name: str = "test",
        *,
        token_label: str | None = None,
        pin: str | Callable[[], str] | None = None,
        **kwargs: Any,
    ) -> Pkcs11Backend:
        """A new, not yet started Pkcs11Backend on one of these tokens."""
        if pin is None:
            pin = self.pin
        provider = pin if callable(pin) else (lambda value=pin: value)
        return Pkcs11Backend(name, self.module, token_label or self.token_label, provider, **kwargs)


def free_port() -> int:
    """A loopback TCP port free right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


GOCODE = Path("/usr/share/gocode")  # where Debian's golang-*-dev packages put Go sources


def json_requests(binary: Path) -> Callable[..., list[dict[str, Any]]]:
    """Run JSON requests through a Go checker: a JSON array on stdin, one of answers out."""

    def run(*requests: dict[str, Any]) -> list[dict[str, Any]]:
        out = subprocess.run(
            [str(binary)],
            input=json.dumps(list(requests)).encode(),
            capture_output=True,
            check=True,
            timeout=60,
        )
        answers: list[dict[str, Any]] = json.loads(out.stdout)
        return answers

    return run


def build_go_checker(source: Path, work: Path, package: str, why: str) -> Path:
    """Build the Go program in folder ``source`` against Debian's Go sources.

    Go's own implementations (``encoding/json``, ``golang.org/x/mod/sumdb``) are the
    independent references our formats are checked against.

    Args:
        source: the folder of a ``main`` package.
        work: a scratch folder (build cache, binary).
        package: a Go import path the program needs (e.g. ``golang.org/x/mod/sumdb/tlog``).
        why: what the reference is for, shown when the test skips.

    Returns:
        The built binary.
    """
    if shutil.which("go") is None:
        pytest.skip(f"no Go toolchain on PATH ({why}); make test installs golang-go")
    if not (GOCODE / "src" / package).is_dir():
        pytest.skip(f"{package} is missing ({why}); make test installs golang-golang-x-mod-dev")
    env = {
        **os.environ,
        "GOCACHE": str(work / "cache"),
        "GOPATH": f"{work / 'gopath'}{os.pathsep}{GOCODE}",
        "GO111MODULE": "off",
        "GOFLAGS": "",
    }
    binary = work / source.name
    subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=source,
        env=env,
        capture_output=True,
        timeout=600,
        check=True,
    )
    return binary


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A private SoftHSM configuration with initialised tokens, for the whole session."""
    from tuf_signer.keys.pkcs11 import _session

    if _session._LIBS:
        pytest.fail("a PKCS#11 module was loaded before the softhsm fixture set SOFTHSM2_CONF")
    conf = write_softhsm_config(tmp_path_factory.mktemp("softhsm"))
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        for label in SOFTHSM_TOKENS:
            init_token(conf, label, SOFTHSM_PIN, SOFTHSM_SO_PIN)
        yield SoftHsm(
            conf=conf,
            module=softhsm_module_path(),
            token_label=SOFTHSM_TOKENS[0],
            pin=SOFTHSM_PIN,
            so_pin=SOFTHSM_SO_PIN,
            token_labels=SOFTHSM_TOKENS,
        )
    finally:
        # The loaded library keeps the configuration it read; this only
        # tidies the environment.
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
async def pkcs11_backend(softhsm: SoftHsm) -> AsyncIterator[Pkcs11Backend]:
    """A started Pkcs11Backend on the "test" token, closed afterwards."""
    backend = softhsm.backend("test")
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


# =====================================================================================
# The fake Cloud KMS (keys, testing, server)
#
# One FakeKms per test module (``fake_kms``), as a real KMS would be shared by
# a deployment; tests that inject faults take ``kms``, which clears them before
# and after. Tests keep out of each other's way with key rings of their own.
# The fake needs the ``gcp`` extra, imported only by the modules that use it.
# =====================================================================================


@pytest.fixture(scope="module")
def fake_kms() -> Iterator[FakeKms]:
    """A fake Cloud KMS on a loopback port, for the whole test module."""
    from tuf_signer.testing.fake_kms import FakeKms

    with FakeKms() as fake:
        yield fake


@pytest.fixture
def kms(fake_kms: FakeKms) -> Iterator[FakeKms]:
    """The module's fake with no fault left over, and none left behind."""
    fake_kms.reset_faults()
    yield fake_kms
    fake_kms.reset_faults()


# =====================================================================================
# PostgreSQL (audit)
#
# The PostgreSQL audit store is tested against a real server, the first found of:
#   1. $TUF_SIGNER_TEST_PG_DSN, a libpq connection string (it must work);
#   2. 127.0.0.1:5432, database "test", user postgres or root, trust auth (CI);
#   3. a throwaway cluster made with the PostgreSQL binaries under
#      /usr/lib/postgresql/*/bin (Debian's `postgresql` package), listening on a
#      Unix socket only, removed at the end of the session.
# With none of them, the PostgreSQL tests are skipped, saying why. Each test gets
# its own schema (`postgres_dsn`), dropped afterwards, so tests never see each other.
# =====================================================================================

PG_DSN_ENV = "TUF_SIGNER_TEST_PG_DSN"
PG_LOCAL_DSNS = (
    "host=127.0.0.1 port=5432 dbname=test user=postgres",
    "host=127.0.0.1 port=5432 dbname=test user=root",
)


@dataclass(frozen=True)
class Postgres:
    """A reachable PostgreSQL server for the tests.

    Attributes:
        dsn: connection string of a role that may create schemas in its database.
        where: how it was found, for messages.
    """

    dsn: str
    where: str

    def connect(self) -> Any:
        """A new autocommit psycopg connection (close it, or use it in ``with``)."""
        import psycopg

        return psycopg.connect(self.dsn, autocommit=True)

    def terminate(self, application_name: str, timeout: float = 10.0) -> int:
        """Kill the server side of every connection with ``application_name``.

        Returns once those backends have exited (their clients then find the
        server's goodbye on their socket), with how many there were.
        """
        with self.connect() as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (application_name,),
            ).fetchone()[0]
            deadline = time.monotonic() + timeout
            while conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND pid <> pg_backend_pid()",
                (application_name,),
            ).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise AssertionError(f"backends of {application_name} did not exit")
                time.sleep(0.01)
        return int(killed)


def _pg_error(dsn: str) -> str | None:
    """None when ``dsn`` reaches a server, else why not."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return None
    except psycopg.Error as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__


@contextlib.contextmanager
def _throwaway_cluster() -> Iterator[str]:
    """initdb + pg_ctl start a private cluster on a Unix socket; yields its DSN."""
    found = sorted(
        Path(p).parent
        for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
        if Path(p).with_name("pg_ctl").exists()
    )
    if not found:
        pytest.skip(
            f"no PostgreSQL server: set {PG_DSN_ENV}, run one on 127.0.0.1:5432 with a "
            "database 'test', or install Debian's postgresql package"
        )
    bindir = max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    # Not under pytest's 0700 tmp tree: when we are root, the server runs as
    # `postgres` (initdb and postgres refuse to run as root) and must reach it.
    home = Path(tempfile.mkdtemp(prefix="tuf-signer-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no 'postgres' user to run a cluster")
        os.chown(home, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, log = home / "data", home / "server.log"

    def run(*argv: str | Path) -> None:
        done = subprocess.run([*run_as, *map(str, argv)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot start a throwaway PostgreSQL: {done.stderr.decode()[-500:]}")

    try:
        run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        run(
            bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60",
            "-o", f"-c listen_addresses='' -k {home}", "start",
        )  # fmt: skip
        try:
            yield f"host={home} port=5432 dbname=postgres user=postgres"
        finally:
            subprocess.run(
                [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                check=False,
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The session's PostgreSQL server (see the section comment); skips without one."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[dev]'")
    dsn = os.environ.get(PG_DSN_ENV)
    if dsn:
        error = _pg_error(dsn)
        if error is not None:
            pytest.fail(f"{PG_DSN_ENV} does not reach PostgreSQL: {error}")
        yield Postgres(dsn, PG_DSN_ENV)
        return
    for dsn in PG_LOCAL_DSNS:
        if _pg_error(dsn) is None:
            yield Postgres(dsn, dsn)
            return
    with _throwaway_cluster() as dsn:
        error = _pg_error(dsn)
        if error is not None:
            pytest.skip(f"the throwaway PostgreSQL does not answer: {error}")
        yield Postgres(dsn, "a throwaway cluster")


@pytest.fixture
def postgres_dsn(postgres: Postgres) -> Iterator[str]:
    """A DSN whose search_path is this test's own new schema, dropped afterwards.

    Its ``application_name`` is the schema's name too, so that a test can find
    (and ``Postgres.terminate``) the connections of the stores it opened.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"tuf_test_{secrets.token_hex(6)}"
    options = conninfo_to_dict(postgres.dsn).get("options") or ""
    with postgres.connect() as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield make_conninfo(
            postgres.dsn, options=f"{options} -csearch_path={name}".strip(), application_name=name
        )
    finally:
        postgres.terminate(name)  # whatever a failed test left open
        with postgres.connect() as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


# =====================================================================================
# (other layers: add your fixtures below, in your own section)
# =====================================================================================
