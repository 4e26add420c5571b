"""What only the PostgreSQL store does: shared writers, its connections, its secrets."""

from __future__ import annotations

import logging
import multiprocessing
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from tuf_signer.audit import Entry, PostgresAuditStore, verify_store
from tuf_signer.audit._postgres import _dialect
from tuf_signer.errors import StoreError
from tuf_signer.model import Outcome

if TYPE_CHECKING:
    from conftest import AuditFactory
    from tests.conftest import Postgres

psycopg = pytest.importorskip("psycopg")
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

SECRET = "s3cr3t-Pw-4711"


@pytest.fixture
def app_name(postgres_dsn: str) -> str:
    """The application_name of this test's store connections (see ``postgres_dsn``)."""
    return str(conninfo_to_dict(postgres_dsn)["application_name"])


@pytest.fixture
def other(postgres_dsn: str) -> Iterator[Any]:
    """Another session on this test's schema, not one of the store's."""
    with psycopg.connect(postgres_dsn, autocommit=True, application_name="other") as conn:
        yield conn


def _hold_writer_lock(conn: Any) -> None:
    """Open a write transaction on ``conn`` the way the store does (it keeps the lock)."""
    for stmt in _dialect().begin_write:
        conn.execute(stmt)


def _wait_for_lock_wait(other: Any, app_name: str) -> None:
    deadline = time.monotonic() + 10
    while not other.execute(
        "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
        (app_name,),
    ).fetchone():
        assert time.monotonic() < deadline, "the append never waited for the lock"
        time.sleep(0.01)


# --- the tables and the session --------------------------------------------------------


def test_tables_are_plain_sql(postgres_dsn: str, make: AuditFactory, other: Any) -> None:
    with PostgresAuditStore(postgres_dsn) as store:
        store.append([make.create_key(), make.sign(7)])
    row = other.execute(
        "SELECT seq, operation, outcome, role, metadata_version, key_version, detail"
        " FROM audit_log WHERE operation = 'sign'"
    ).fetchone()
    assert row == (2, "sign", "granted", "snapshot", 7, 1, "{}")
    assert other.execute("SELECT role, version, audit_seq FROM role_state").fetchall() == [
        ("snapshot", 7, 2)
    ]
    assert other.execute("SELECT version FROM schema_version").fetchall() == [(5,)]
    types = other.execute(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = 'audit_log' AND column_name IN ('seq', 'metadata_version')"
    ).fetchall()
    assert types == [("bigint",), ("bigint",)]


def test_every_session_commits_durably(postgres_dsn: str) -> None:
    # Even when the connection string asks for asynchronous commits.
    options = conninfo_to_dict(postgres_dsn)["options"]
    dsn = make_conninfo(postgres_dsn, options=f"{options} -csynchronous_commit=off")
    with psycopg.connect(dsn) as plain:
        assert plain.execute("SHOW synchronous_commit").fetchone() == ("off",)
    with PostgresAuditStore(dsn, lock_timeout=2.5) as store:
        cur = store._connection().cursor()
        cur.execute("SHOW synchronous_commit")
        assert cur.fetchone() == ("on",)
        cur.execute("SHOW lock_timeout")
        assert cur.fetchone() == ("2500ms",)


def test_other_schema_version(postgres_dsn: str, other: Any) -> None:
    PostgresAuditStore(postgres_dsn).close()
    other.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match=r"schema version 99; this tuf-signer reads version 5"):
        PostgresAuditStore(postgres_dsn)


def test_without_create_an_empty_schema_is_refused(postgres_dsn: str, other: Any) -> None:
    # `tuf-signer audit verify` must not make an empty record appear.
    with pytest.raises(StoreError, match="no tuf-signer audit tables"):
        PostgresAuditStore(postgres_dsn, create=False)
    tables = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    assert other.execute(tables).fetchall() == []
    PostgresAuditStore(postgres_dsn).close()
    PostgresAuditStore(postgres_dsn, create=False).close()


# --- several writers -------------------------------------------------------------------

WRITERS = 2
VERSIONS = 60


def _write(dsn: str, batches: list[list[Entry]], start: Any, results: Any) -> None:
    """One writer process: open the store, wait for the others, append every batch."""
    try:
        with PostgresAuditStore(dsn) as store:
            start.wait(timeout=60)
            out = [(c.seq, c.status) for batch in batches for c in store.append(batch)]
        results.put(out)
    except BaseException as e:  # reported to the test
        results.put(f"{type(e).__name__}: {e}")


def test_writer_processes_share_one_chain(postgres_dsn: str, make: AuditFactory) -> None:
    # Several workers or instances append at once. Each races the others for
    # every version of one role, with its own payload: an equivocation attempt
    # at each version, which the shared role state must refuse.
    with PostgresAuditStore(postgres_dsn) as store:
        store.append([make.create_key()])
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(WRITERS), ctx.Queue()
    plans = [
        [[make.sign(v, f"writer-{w}"), make.note(identity=f"writer-{w}")] for v in range(VERSIONS)]
        for w in range(WRITERS)
    ]
    procs = [ctx.Process(target=_write, args=(postgres_dsn, p, start, results)) for p in plans]
    for p in procs:
        p.start()
    try:
        outs = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
    errors = [out for out in outs if isinstance(out, str)]
    assert errors == []
    seqs = sorted(seq for out in outs for seq, _ in out)
    total = 1 + WRITERS * VERSIONS * 2
    assert seqs == list(range(2, total + 1))  # no seq handed out twice, none skipped
    for out in outs:
        assert [seq for seq, _ in out] == sorted(seq for seq, _ in out)

    with PostgresAuditStore(postgres_dsn) as store:
        report = verify_store(store)  # the chain, and no rollback or equivocation on it
        assert report.records == total
        granted = [
            r.event.metadata_version
            for r in store.records()
            if r.event.operation == "sign" and r.event.outcome is Outcome.GRANTED
        ]
    assert granted == sorted(set(granted))
    # Each writer's results alternate sign, note: the granted signs are its OKs at even places.
    assert len(granted) == sum(status == "OK" for out in outs for _, status in out[0::2])


def test_a_writer_waits_for_another_and_gives_up_at_lock_timeout(
    postgres_dsn: str, make: AuditFactory, other: Any
) -> None:
    with PostgresAuditStore(postgres_dsn, lock_timeout=0.2) as store:
        store.append([make.create_key()])
        head = store.head()
        _hold_writer_lock(other)
        with pytest.raises(StoreError, match=r"audit store unavailable: LockNotAvailable"):
            store.append([make.sign(1), make.note()])
        other.execute("ROLLBACK")
        assert store.head() == head
        assert store.get_role_state("online", "snapshot") is None
        assert store.append([make.sign(1)])[0].seq == head[0] + 1


# --- dropped connections ---------------------------------------------------------------


def test_reconnects_after_the_server_drops_its_connections(
    postgres: Postgres,
    postgres_dsn: str,
    app_name: str,
    make: AuditFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with PostgresAuditStore(postgres_dsn) as store, ThreadPoolExecutor(1) as reader:
        store.append([make.create_key()])
        head = reader.submit(store.head).result()
        for round_ in range(2):
            # The writer's and the reader thread's connections, killed while idle.
            assert postgres.terminate(app_name) == 2
            with caplog.at_level(logging.WARNING, "tuf_signer.audit"):
                assert reader.submit(store.head).result() == head
                out = store.append([make.sign(round_ + 1)])
            assert out[0].status == "OK"
            head = store.head()
            lost = [r for r in caplog.records if "was lost; reconnecting" in r.getMessage()]
            assert len(lost) == 2 * (round_ + 1)
        assert verify_store(store).records == 3


def test_a_connection_cut_mid_append_fails_closed_then_reconnects(
    postgres: Postgres, postgres_dsn: str, app_name: str, make: AuditFactory, other: Any
) -> None:
    with PostgresAuditStore(postgres_dsn) as store, ThreadPoolExecutor(1) as writer:
        writer.submit(store.append, [make.create_key(), make.sign(1)]).result()
        head = store.head()
        _hold_writer_lock(other)
        pending = writer.submit(store.append, [make.sign(2), make.note()])
        _wait_for_lock_wait(other, app_name)  # inside its transaction, waiting for ours
        postgres.terminate(app_name)
        with pytest.raises(StoreError, match=r"audit store unavailable: AdminShutdown"):
            pending.result(timeout=10)
        other.execute("ROLLBACK")
        # Nothing of the cut batch was written; the same thread's next call reconnects.
        assert store.head() == head
        out = writer.submit(store.append, [make.sign(2)]).result()
        assert (out[0].seq, out[0].status) == (head[0] + 1, "OK")
        assert verify_store(store).records == head[0] + 1


def test_no_server_is_unavailable() -> None:
    with pytest.raises(StoreError, match=r"audit store unavailable: OperationalError: .*refused"):
        PostgresAuditStore("host=127.0.0.1 port=1 dbname=test connect_timeout=2")


# --- secrets ---------------------------------------------------------------------------


def _assert_secret_not_in(error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    shown = "".join(traceback.format_exception(error))  # with every chained cause
    assert SECRET not in shown
    assert SECRET not in repr(error)
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    "dsn",
    [
        pytest.param(f"postgresql://tuf:{SECRET}@[::1/audit", id="uri-unbalanced-bracket"),
        pytest.param(f"host=db password={SECRET} bogus=1", id="unknown-parameter"),
        pytest.param(f"host=db password='{SECRET}", id="unterminated-quote"),
        pytest.param(f"password={SECRET} host", id="missing-equals"),
    ],
)
def test_malformed_dsn_is_never_repeated(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError, match="connection string is not valid") as caught:
        PostgresAuditStore(dsn)
    _assert_secret_not_in(caught.value, caplog)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        pytest.param({"host": "127.0.0.1", "port": "1"}, "refused", id="no-server"),
        pytest.param({"dbname": "no_such_database"}, "does not exist", id="no-database"),
        pytest.param({"user": "no_such_role"}, "no_such_role", id="no-role"),
    ],
)
def test_connection_errors_never_show_the_password(
    postgres: Postgres, change: dict[str, str], match: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = make_conninfo(postgres.dsn, password=SECRET, connect_timeout="3", **change)
    with pytest.raises(StoreError, match=match) as caught:
        PostgresAuditStore(dsn)
    _assert_secret_not_in(caught.value, caplog)


def test_repr_and_log_never_show_the_password(
    postgres: Postgres,
    postgres_dsn: str,
    app_name: str,
    make: AuditFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # Trust authentication ignores the password; the store must still hide it.
    dsn = make_conninfo(postgres_dsn, password=SECRET)
    with PostgresAuditStore(dsn) as store:
        store.append([make.create_key()])
        postgres.terminate(app_name)
        store.head()  # reconnects, and says so in the log
        assert "reconnecting" in caplog.text
        assert SECRET not in repr(store)
        assert SECRET not in repr(vars(store))
        assert "dbname=" in repr(store)
    assert SECRET not in caplog.text


# --- least privilege -------------------------------------------------------------------

# What the server's role needs once the owner has created the tables: it never
# updates or deletes a record, or the schema version.
WRITER_GRANTS = (
    "GRANT SELECT ON schema_version TO {role}",
    "GRANT SELECT, INSERT ON audit_log, audit_tree TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON keys, key_versions, role_state, role_coherence TO {role}",
)
AUDITOR_GRANTS = ("GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",)


@pytest.fixture
def role(postgres: Postgres, postgres_dsn: str, other: Any) -> Iterator[tuple[str, str]]:
    """A new login role with USAGE on this test's schema: (its name, a DSN for it)."""
    name = f"{conninfo_to_dict(postgres_dsn)['application_name']}_role"
    schema = other.execute("SELECT current_schema()").fetchone()[0]
    try:
        other.execute(f"CREATE ROLE {name} LOGIN")
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip(f"the test role of {postgres.where} may not create roles")
    try:
        other.execute(f"GRANT USAGE ON SCHEMA {schema} TO {name}")
        dsn = make_conninfo(postgres_dsn, user=name)
        try:
            psycopg.connect(dsn).close()
        except psycopg.OperationalError as e:
            pytest.skip(f"cannot log in as a new role without a password: {e}")
        yield name, dsn
    finally:
        postgres.terminate(str(conninfo_to_dict(postgres_dsn)["application_name"]))
        other.execute(f"DROP OWNED BY {name}")
        other.execute(f"DROP ROLE {name}")


def test_least_privilege_roles(
    postgres_dsn: str, role: tuple[str, str], make: AuditFactory, other: Any
) -> None:
    name, dsn = role
    schema = other.execute("SELECT current_schema()").fetchone()[0]
    with PostgresAuditStore(postgres_dsn) as owner:  # creates the tables
        owner.append([make.create_key()])

    for grant in WRITER_GRANTS:
        other.execute(grant.format(role=name, schema=schema))
    with PostgresAuditStore(dsn) as store:
        out = store.append(
            [make.sign(1), make.add_version(), make.set_state(), make.sign(2, key_version=2)]
        )
        assert [c.status for c in out] == ["OK"] * 4
        verify_store(store)
    with psycopg.connect(dsn, autocommit=True) as conn:  # the server's credentials, stolen
        for sql in (
            "DELETE FROM audit_log",
            "UPDATE audit_log SET reason = ''",
            "DELETE FROM audit_tree",
            "UPDATE audit_tree SET hash = ''",
            "UPDATE schema_version SET version = 1",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)

    other.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {name}")
    for grant in AUDITOR_GRANTS:
        other.execute(grant.format(role=name, schema=schema))
    with PostgresAuditStore(dsn, create=False) as auditor:  # `tuf-signer audit verify`
        assert verify_store(auditor).records == 5
        with pytest.raises(StoreError, match="InsufficientPrivilege"):
            auditor.append([make.note()])
