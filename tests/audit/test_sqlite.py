"""What only the SQLite store does: its file, its pragmas, its failures."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tuf_signer.audit import GENESIS_HASH, Entry, SqliteAuditStore, verify_store
from tuf_signer.errors import StoreError

if TYPE_CHECKING:
    from conftest import AuditFactory


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


def test_new_database_is_private_and_durable(db: Path) -> None:
    with SqliteAuditStore(db) as store:
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        conn = store._sqlite_connection()
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (5000,)


def test_existing_database_mode_is_left_alone(db: Path) -> None:
    SqliteAuditStore(db).close()
    db.chmod(0o640)
    SqliteAuditStore(db).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o640


def test_tables_are_plain_sql(db: Path, make: AuditFactory) -> None:
    with SqliteAuditStore(db) as store:
        store.append([make.create_key(), make.sign(7)])
    conn = sqlite3.connect(db)
    row = conn.execute(
        "SELECT seq, operation, outcome, role, metadata_version, key_version, detail"
        " FROM audit_log WHERE operation = 'sign'"
    ).fetchone()
    assert row == (2, "sign", "granted", "snapshot", 7, 1, "{}")
    assert conn.execute("SELECT role, version, audit_seq FROM role_state").fetchall() == [
        ("snapshot", 7, 2)
    ]
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(5,)]
    conn.close()


@pytest.mark.parametrize(
    ("path", "match"),
    [
        pytest.param("missing/audit.db", "directory .*missing does not exist", id="no-directory"),
        pytest.param(".", "is a directory", id="a-directory"),
        pytest.param(":memory:", "not an in-memory database", id="memory"),
    ],
)
def test_unusable_paths(tmp_path: Path, path: str, match: str) -> None:
    target = path if path == ":memory:" else tmp_path / path
    with pytest.raises(StoreError, match=match):
        SqliteAuditStore(target)


def test_not_a_database(db: Path) -> None:
    db.write_bytes(b"this is not sqlite, " * 100)
    with pytest.raises(StoreError, match="audit store unavailable: DatabaseError"):
        SqliteAuditStore(db)


def test_other_schema_version(db: Path) -> None:
    SqliteAuditStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"schema version 99; this tuf-signer reads version 5"):
        SqliteAuditStore(db)


def test_closed_store(db: Path, make: AuditFactory) -> None:
    store = SqliteAuditStore(db)
    store.close()
    store.close()  # twice is fine
    with pytest.raises(StoreError, match="closed"):
        store.head()
    with pytest.raises(StoreError, match="closed"):
        store.append([make.note()])


# --- failures leave no partial batch ----------------------------------------------


def _assert_untouched(db: Path, head: tuple[int, str], make: AuditFactory) -> None:
    with SqliteAuditStore(db) as store:
        assert store.head() == head
        assert store.get_key("new") is None
        verify_store(store)
        # ...and the store still works.
        assert store.append([make.note()])[0].seq == head[0] + 1


def _batch(make: AuditFactory) -> list[Entry]:
    return [make.note(), make.create_key("new"), make.sign(2), make.note()]


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """Make ``path`` unwritable, even for root (who ignores file modes)."""
    if os.geteuid() != 0:
        path.chmod(0o400)
        try:
            yield
        finally:
            path.chmod(0o600)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a file read-only")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_file(db: Path, make: AuditFactory) -> None:
    with SqliteAuditStore(db) as store:
        store.append([make.create_key(), make.sign(1)])
        head = store.head()
    with _read_only(db), SqliteAuditStore(db) as store:
        assert store.head() == head  # still readable
        with pytest.raises(StoreError, match=r"audit store unavailable: .*readonly"):
            store.append(_batch(make))
    _assert_untouched(db, head, make)


def test_directory_moved_away(tmp_path: Path, make: AuditFactory) -> None:
    home = tmp_path / "audit"
    home.mkdir()
    store = SqliteAuditStore(home / "audit.db")
    store.append([make.create_key(), make.sign(1)])
    head = store.head()
    home.rename(tmp_path / "elsewhere")
    try:
        with pytest.raises(StoreError, match="vanished while open"):
            store.append(_batch(make))
    finally:
        store.close()
        (tmp_path / "elsewhere").rename(home)
    _assert_untouched(home / "audit.db", head, make)


def test_directory_deleted(tmp_path: Path, make: AuditFactory) -> None:
    home = tmp_path / "audit"
    home.mkdir()
    with SqliteAuditStore(home / "audit.db") as store:
        store.append([make.create_key()])
        shutil.rmtree(home)
        with pytest.raises(StoreError, match="vanished while open"):
            store.append(_batch(make))


def test_file_replaced(db: Path, make: AuditFactory) -> None:
    with SqliteAuditStore(db) as store:
        store.append([make.create_key()])
        shutil.copy(db, db.with_suffix(".copy"))
        os.replace(db.with_suffix(".copy"), db)
        with pytest.raises(StoreError, match="was replaced while open"):
            store.append(_batch(make))


def test_new_thread_after_directory_vanished(tmp_path: Path, make: AuditFactory) -> None:
    # A thread that opens its connection after the file is gone must not create
    # a fresh empty database in its place.
    home = tmp_path / "audit"
    home.mkdir()
    with SqliteAuditStore(home / "audit.db") as store:
        shutil.rmtree(home)
        home.mkdir()
        caught: list[BaseException] = []

        def write() -> None:
            try:
                store.append([make.note()])
            except BaseException as e:  # checked below
                caught.append(e)

        t = threading.Thread(target=write)
        t.start()
        t.join()
        assert len(caught) == 1
        assert isinstance(caught[0], StoreError)
        assert not (home / "audit.db").exists()


def test_locked_by_another_writer(db: Path, make: AuditFactory) -> None:
    with SqliteAuditStore(db) as store:
        store.append([make.create_key()])
        head = store.head()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with (
            SqliteAuditStore(db, busy_timeout=0.2) as store,
            pytest.raises(StoreError, match=r"audit store unavailable: .*locked"),
        ):
            store.append(_batch(make))
    finally:
        other.execute("ROLLBACK")
        other.close()
    _assert_untouched(db, head, make)


def test_failure_mid_batch_rolls_back_earlier_entries(db: Path, make: AuditFactory) -> None:
    with SqliteAuditStore(db) as store:
        store.append([make.create_key()])
        head = store.head()
        # The fourth entry passes the entry checks but does not fit a 64-bit column.
        with pytest.raises(StoreError, match="audit store unavailable: OverflowError"):
            store.append([*_batch(make), make.note(key_version=2**64)])
        assert store.head() == head
        assert store.get_role_state("online", "snapshot") is None
    _assert_untouched(db, head, make)


def test_head_of_fresh_store(db: Path) -> None:
    with SqliteAuditStore(db) as store:
        assert store.head() == (0, GENESIS_HASH)


def test_writers_of_two_stores_on_one_file_queue_on_the_writer_lock(
    db: Path, make: AuditFactory
) -> None:
    """A second writer waits for the first on the kernel lock, then commits after it."""
    with SqliteAuditStore(db) as first, SqliteAuditStore(db) as second:
        first.append([make.create_key()])
        lock = db.with_name(db.name + ".writer-lock")
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
        done: list[int] = []
        with first._writer_turn():  # as if `first` were in the middle of a commit
            waiter = threading.Thread(
                target=lambda: done.extend(c.seq for c in second.append([make.sign(1)]))
            )
            waiter.start()
            waiter.join(0.5)
            assert waiter.is_alive() and not done, "the second writer did not wait its turn"
        waiter.join(10)
        assert done == [2]
        verify_store(first)


def test_a_probe_never_releases_the_writers_lock(db: Path, make: AuditFactory) -> None:
    """Review E: the probe shares the store's lock-file descriptor, and flock
    belongs to the open file: its unlock must not free the writer's turn."""
    lock = db.with_name(db.name + ".writer-lock")
    other = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n"
        "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n"
        "    print('held')\n"
        "else:\n"
        "    print('free')\n"
    )

    def another_process_sees() -> str:
        out = subprocess.run(
            [sys.executable, "-c", other, str(lock)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()

    with SqliteAuditStore(db) as store:
        store.append([make.create_key()])
        with store._writer_turn():  # the writer, in the middle of a commit
            assert another_process_sees() == "held"
            with pytest.raises(StoreError, match=r"audit store unavailable: .*held the lock"):
                store.probe(timeout=0.3)
            assert another_process_sees() == "held", "the probe released the writer's lock"
        assert another_process_sees() == "free"
        store.probe(timeout=5)  # and once the writer is done, the probe gets its turn
        verify_store(store)
