"""``tuf-signer audit verify`` as an auditor runs it: the [audit] table, verifier keys, files kept.

The store is made offline (the same records a signer writes, a software
audit key); the commands run as a user runs them. An auditor's config holds
only ``[audit]``: no backend, no HSM. A real witness process serves its
latest cosigned checkpoint for ``--from-witnesses``.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.audit._logkeys import ORIGIN, SoftwareLogKey, SoftwareWitness
from tests.audit.conftest import AuditFactory
from tests.cli.conftest import run
from tests.witness.conftest import Log, WitnessProcess, make_witness
from tuf_signer.audit import SqliteAuditStore
from tuf_signer.audit._checkpoint import Checkpoint, sign_checkpoint
from tuf_signer.cli import main
from tuf_signer.config import load_audit_config, parse_config
from tuf_signer.model import KeyState, Outcome
from tuf_signer.witness import add_checkpoint

LOG = SoftwareLogKey.generate()
WITNESS = SoftwareWitness.generate("witness.test/w1")


def _entries(make: AuditFactory) -> list:
    return [
        make.create_key(),
        make.add_version("online", 2),
        make.sign(1, "s1"),
        make.sign(1, "t1", role="timestamp"),
        make.note(outcome=Outcome.REFUSED, status="PERMISSION_DENIED"),
        make.sign(2, "s2"),
        make.sign(1, "b1", role="bins-0000"),
        make.set_state("online", 2, KeyState.ACTIVE),
        make.sign(3, "s3", key_version=2),
    ]


@dataclass
class Auditor:
    """What an auditor holds: a config with only [audit], keys, and checkpoints kept."""

    dir: Path
    config: Path
    db: Path
    vkey: Path
    early: Path  # checkpoint of size 4, cosigned
    later: Path  # checkpoint of size 9, cosigned
    old_copy: Path  # a backup of the database taken at size 6
    make: AuditFactory

    def verify(self, *args: str) -> tuple[int, str, str]:
        return _main("audit", "verify", "--config", str(self.config), *args)


def _main(*argv: str) -> tuple[int, str, str]:
    """Run the command in this process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _keep(store: SqliteAuditStore, path: Path) -> Path:
    """Sign and cosign the store's tree now; keep the note in ``path``, as an auditor does."""
    size = store.tree_size()
    LOG.checkpoint(store, size)
    WITNESS.cosign(store, ORIGIN, size)
    stored = store.checkpoint_at(ORIGIN, size)
    assert stored is not None
    path.write_bytes(stored.note)
    return path


def _config(directory: Path, extra: str = "") -> Path:
    path = directory / "auditor.toml"
    path.write_text(
        "# An auditor's copy: the [audit] table only.\n"
        f'[audit]\nstore = "sqlite"\npath = "audit.db"\norigin = "{ORIGIN}"\n'
        'key = { backend = "hsm-we-do-not-have", handle = "h" }\n' + extra
    )
    return path


@pytest.fixture
def auditor(tmp_path: Path) -> Auditor:
    make = AuditFactory()
    db = tmp_path / "audit.db"
    entries = _entries(make)
    with SqliteAuditStore(db) as store:
        store.append(entries[:4])
        early = _keep(store, tmp_path / "early.note")
        store.append(entries[4:6])
    old_copy = tmp_path / "backup.db"
    shutil.copy(db, old_copy)  # closed: the WAL is checkpointed into the file
    with SqliteAuditStore(db) as store:
        store.append(entries[6:])
        later = _keep(store, tmp_path / "later.note")
    vkey = tmp_path / "log.vkey"
    vkey.write_text(LOG.key.text() + "\n")
    return Auditor(tmp_path, _config(tmp_path), db, vkey, early, later, old_copy, make)


def test_an_auditor_s_config_with_only_the_audit_table_works(auditor: Auditor) -> None:
    """The real command, with no [backends] and nothing but the store and the keys."""
    done = run("audit", "verify", "--config", str(auditor.config))
    assert done.stdout.startswith("OK: 9 records, head seq 9 hash ")
    assert "3 role states cross-checked" in done.stdout
    assert "checkpoints were NOT checked: no verifier key of the log was given" in done.stdout
    done = run(
        "audit", "verify", "--config", str(auditor.config), "--vkey-file", str(auditor.vkey),
        "--checkpoint", str(auditor.early), "--checkpoint", str(auditor.later),
    )  # fmt: skip
    assert done.stdout.count("\n") == 1
    line = done.stdout
    assert line.startswith("OK: 9 records, head seq 9 hash ")
    # No witness key given: their cosignatures are not checked, and not claimed.
    assert "held against the store's newest checkpoint (size 9), " in line
    assert f"checkpoint {auditor.early} (size 4), checkpoint {auditor.later} (size 9)\n" in line
    assert "NOT checked" not in line


def test_json_is_one_object(auditor: Auditor) -> None:
    code, out, _ = auditor.verify(
        "--vkey", LOG.key.text(), "--witness-vkey", WITNESS.key.text(),
        "--checkpoint", str(auditor.early), "--json",
    )  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True and report["mode"] == "full"
    assert (report["tree_size"], report["records_read"], report["role_states"]) == (9, 9, 3)
    assert [c["size"] for c in report["checkpoints"]] == [9, 4]
    assert report["checkpoints"][1]["cosigners"] == [WITNESS.key.name]
    assert report["checkpoints_checked"] is True
    code, out, _ = auditor.verify("--json")
    assert json.loads(out)["checkpoints_checked"] is False


def test_a_restored_backup_fails_naming_both_sizes(auditor: Auditor) -> None:
    shutil.copy(auditor.old_copy, auditor.db)
    assert auditor.verify()[0] == 0  # the old copy agrees with itself
    code, out, err = auditor.verify(
        "--vkey-file", str(auditor.vkey), "--checkpoint", str(auditor.later)
    )
    assert (code, out) == (1, "")
    assert err == (
        f"FAILED: the store holds 6 records but checkpoint {auditor.later} covers 9: "
        "it is an older copy, or records were removed\n"
    )
    code, out, _ = auditor.verify(
        "--vkey-file", str(auditor.vkey), "--checkpoint", str(auditor.later), "--json"
    )
    failure = json.loads(out)
    assert (code, failure["ok"], failure["failure"]) == (1, False, "behind")
    assert failure["source"] == f"checkpoint {auditor.later}"


def test_a_fork_fails_naming_the_size(auditor: Auditor) -> None:
    """Another store grown from the backup: consistent with itself, signed with the log's key."""
    shutil.copy(auditor.old_copy, auditor.db)
    with SqliteAuditStore(auditor.db) as store:
        store.append([auditor.make.note() for _ in range(4)])
        body = Checkpoint(ORIGIN, 10, store.tree_hash(10))
        store.add_checkpoint(
            ORIGIN, 10, sign_checkpoint(body, LOG.key, LOG.private.sign).format(), "t"
        )
    # Its own checkpoint, and the early one (before the fork), pass:
    code, out, _ = auditor.verify(
        "--vkey-file", str(auditor.vkey), "--checkpoint", str(auditor.early)
    )
    assert code == 0, out
    code, _, err = auditor.verify(
        "--vkey-file", str(auditor.vkey), "--checkpoint", str(auditor.later)
    )
    assert code == 1
    assert err.startswith(
        f"FAILED: the store's tree at size 9 does not match checkpoint {auditor.later}: "
        "the store forked or records were edited (its root is "
    )


def test_an_incremental_run_from_a_kept_checkpoint(auditor: Auditor) -> None:
    with SqliteAuditStore(auditor.db) as store:
        store.append([auditor.make.note() for _ in range(3)])
    code, out, _ = auditor.verify("--vkey-file", str(auditor.vkey), "--since", str(auditor.later))
    assert code == 0
    assert out.startswith(
        f"OK: 3 new records (10..12) re-hashed on checkpoint {auditor.later} (size 9), tree root "
    )
    assert " at size 12; held against the store's newest checkpoint (size 9); " in out
    assert "role states were not checked (a full run checks them)" in out
    shutil.copy(auditor.old_copy, auditor.db)
    code, _, err = auditor.verify("--vkey-file", str(auditor.vkey), "--since", str(auditor.later))
    assert code == 1
    assert err.startswith("FAILED: the store holds 6 records but checkpoint ")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("--witness-vkey", "{other}"), "checkpoint has 0 valid cosignatures of the 1 required"),
        (("--witness-vkey", "{witness}", "--quorum", "1"), "OK"),
        (
            ("--witness-vkey", "{witness}", "--witness-vkey", "{other}"),
            "checkpoint has 1 valid cosignatures of the 2 required",
        ),
        (("--witness-vkey", "{witness}", "--witness-vkey", "{other}", "--quorum", "1"), "OK"),
    ],
    ids=["wrong-witness", "right-witness", "quorum-of-two", "one-of-two"],
)
def test_witness_keys_and_quorum(auditor: Auditor, args: tuple[str, ...], match: str) -> None:
    other = SoftwareWitness.generate("witness.test/w2").key.text()
    given = [a.format(witness=WITNESS.key.text(), other=other) for a in args]
    code, out, err = auditor.verify(
        "--vkey-file", str(auditor.vkey), "--checkpoint", str(auditor.later), *given
    )
    if match == "OK":
        assert code == 0 and out.startswith("OK:")
    else:
        assert code == 1
        assert err == f"FAILED: checkpoint {auditor.later}: {match}\n"


def test_the_config_s_witnesses_are_the_default(auditor: Auditor) -> None:
    other = SoftwareWitness.generate("witness.test/w2").key.text()
    _config(auditor.dir, f'[[audit.witnesses]]\nurl = "http://127.0.0.1:9"\nvkey = "{other}"\n')
    code, _, err = auditor.verify(
        "--vkey-file", str(auditor.vkey), "--checkpoint", str(auditor.later)
    )
    assert code == 1
    assert "checkpoint has 0 valid cosignatures of the 1 required" in err
    # Given on the command line, they replace the config's.
    code, _, _ = auditor.verify(
        "--vkey-file", str(auditor.vkey), "--checkpoint", str(auditor.later),
        "--witness-vkey", WITNESS.key.text(),
    )  # fmt: skip
    assert code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--checkpoint", "x"), "--checkpoint, --since and --from-witnesses need --vkey"),
        (("--quorum", "1"), "--witness-vkey and --quorum need --vkey or --vkey-file"),
        (("--vkey", "nonsense"), "--vkey: verifier key is not name+id+key"),
        (("--vkey", "{other_log}"), "--vkey is the key of 'other.test/log' but audit.origin is"),
        (("--vkey", "{log}", "--quorum", "1"), "quorum 1 is not between 0 and the 0 witness keys"),
        (("--vkey", "{log}", "--witness-vkey", "{log}"), "is not a cosignature/v1 (0x04) key"),
        (("--vkey", "{log}", "--checkpoint", "/nonexistent"), "--checkpoint: cannot read"),
        (("--vkey", "{log}", "--from-witnesses"), "the config lists no [[audit.witnesses]]"),
    ],
    ids=[
        "checkpoint-without-vkey",
        "quorum-without-vkey",
        "malformed-vkey",
        "vkey-of-another-origin",
        "quorum-above-witnesses",
        "log-key-as-witness",
        "missing-file",
        "no-witnesses-configured",
    ],
)
def test_usage_errors_say_what_to_give(
    auditor: Auditor, args: tuple[str, ...], message: str
) -> None:
    other_log = SoftwareLogKey.generate("other.test/log").key.text()
    given = [a.format(log=LOG.key.text(), other_log=other_log) for a in args]
    code, out, err = auditor.verify(*given)
    assert (code, out) == (1, "")
    assert err.startswith("error: ") and message in err, err


def test_a_checkpoint_with_a_bad_signature_names_the_file(auditor: Auditor) -> None:
    text = auditor.later.read_text()
    body, signatures = text.split("\n\n", 1)
    lines = signatures.splitlines()
    lines[0] = lines[0][:-6] + ("AAAA==" if not lines[0].endswith("AAAA==") else "BBBB==")
    bad = auditor.dir / "bad.note"
    bad.write_text(body + "\n\n" + "\n".join(lines) + "\n")
    code, _, err = auditor.verify("--vkey-file", str(auditor.vkey), "--checkpoint", str(bad))
    assert code == 1
    assert err.startswith(f"FAILED: checkpoint {bad}: ")


# --- a real witness ---------------------------------------------------------------------------


@pytest.fixture
def witness(auditor: Auditor) -> Iterator[WitnessProcess]:
    """``tuf-signer witness serve`` for the log, holding its checkpoint of size 9."""
    w = make_witness(auditor.dir / "witness", [Log(ORIGIN, private=LOG.private)])
    w.start()
    try:
        with SqliteAuditStore(auditor.db) as store:
            stored = store.checkpoint_at(ORIGIN, 9)
            assert stored is not None
            note = stored.note.split("\u2014 witness".encode())[0]  # the log's signature only
            lines = add_checkpoint(w.url, 0, (), note, timeout=10)
        cosigned = lines.decode().splitlines()[0]
        with SqliteAuditStore(auditor.db) as store:
            store.add_cosignatures(ORIGIN, 9, [(w.vkey.name, cosigned)], "t")
        _config(
            auditor.dir,
            f'[[audit.witnesses]]\nurl = "{w.url}"\nvkey = "{w.vkey.text()}"\n',
        )
        yield w
    finally:
        w.stop()


def test_from_witnesses_holds_the_store_to_each_witness(
    auditor: Auditor, witness: WitnessProcess
) -> None:
    code, out, err = auditor.verify("--vkey-file", str(auditor.vkey), "--from-witnesses")
    assert code == 0, err
    assert (
        f"witness {witness.vkey.name} ({witness.url}) (size 9, cosigned by {witness.vkey.name})"
        in out
    )
    shutil.copy(auditor.old_copy, auditor.db)
    code, _, err = auditor.verify("--vkey-file", str(auditor.vkey), "--from-witnesses")
    assert code == 1
    assert err == (
        f"FAILED: the store holds 6 records but witness {witness.vkey.name} ({witness.url}) "
        "covers 9: it is an older copy, or records were removed\n"
    )


def test_from_witnesses_trusts_only_the_witness_keys_given(
    auditor: Auditor, witness: WitnessProcess
) -> None:
    """Review finding 8: the config may come from the compromised host; --witness-vkey rules."""
    other = SoftwareWitness.generate("witness.test/w2").key.text()
    code, out, err = auditor.verify(
        "--vkey-file", str(auditor.vkey), "--from-witnesses", "--witness-vkey", other,
        "--quorum", "0",
    )  # fmt: skip
    assert (code, out) == (1, "")
    assert err == (
        f"error: --from-witnesses: the config's witness {witness.vkey.name} ({witness.url}) has "
        f"the key {witness.vkey.text()}, which is not among the --witness-vkey keys given\n"
    )
    code, out, err = auditor.verify(
        "--vkey-file", str(auditor.vkey), "--from-witnesses",
        "--witness-vkey", witness.vkey.text(),
    )  # fmt: skip
    assert code == 0, err
    assert f"witness {witness.vkey.name} ({witness.url}) (size 9" in out


def test_a_quorum_asked_for_must_be_met(auditor: Auditor) -> None:
    """Review finding 9: --quorum / --witness-vkey with no stored checkpoint meeting them fails."""
    with SqliteAuditStore(auditor.db) as store:
        store.append([auditor.make.note()])
        LOG.checkpoint(store)  # the newest checkpoint (size 10) is not cosigned
    code, out, err = auditor.verify("--vkey-file", str(auditor.vkey))
    assert code == 0, err  # no quorum asked for: the newest checkpoint alone
    other = SoftwareWitness.generate("witness.test/w2").key.text()
    code, out, err = auditor.verify("--vkey-file", str(auditor.vkey), "--witness-vkey", other)
    assert (code, out) == (1, "")
    assert err.startswith(
        "FAILED: no checkpoint in the store is cosigned by 1 of the given witnesses"
    )
    assert "a quorum of 1 was asked for (witnesses 'witness.test/w2')" in err
    code, out, _ = auditor.verify(
        "--vkey-file", str(auditor.vkey), "--witness-vkey", WITNESS.key.text(), "--json"
    )
    assert code == 0  # the checkpoint of size 9 is cosigned by it
    assert json.loads(out)["checkpoints"][-1]["source"] == "the store's newest witnessed checkpoint"


def test_from_witnesses_fails_when_a_witness_cannot_answer(
    auditor: Auditor, witness: WitnessProcess
) -> None:
    witness.stop()
    code, _, err = auditor.verify("--vkey-file", str(auditor.vkey), "--from-witnesses")
    assert code == 1
    assert err.startswith(
        f"FAILED: witness {witness.vkey.name} ({witness.url}): cannot fetch its checkpoint: "
        f"cannot reach the witness"
    )


# --- the [audit] table alone ------------------------------------------------------------------


def test_only_the_audit_table_is_read(auditor: Auditor) -> None:
    """Other tables may hold what this host cannot use; [audit] is read as the server reads it."""
    text = auditor.config.read_text()
    auditor.config.write_text(
        text + '[backends.hsm]\ntype = "no-such-backend"\n[server]\nno_such_setting = 1\n'
    )
    assert auditor.verify()[0] == 0
    auditor.config.write_text(text.replace('path = "audit.db"', "path = 5"))
    code, _, err = auditor.verify()
    assert (code, err) == (1, "error: audit.path: expected str, got int\n")
    auditor.config.write_text(text.replace('path = "audit.db"', 'path = "elsewhere.db"'))
    code, _, err = auditor.verify()
    assert code == 1
    assert err == f"error: audit.path: {auditor.dir / 'elsewhere.db'} does not exist\n"


def test_load_audit_config_reads_the_audit_table_as_load_config_does(auditor: Auditor) -> None:
    audit = load_audit_config(auditor.config)
    assert audit.path == auditor.dir / "audit.db"
    assert audit.log is not None and audit.log.origin == ORIGIN
    full = tomllib.loads(auditor.config.read_text())
    full["backends"] = {"hsm-we-do-not-have": {"type": "pkcs11", "module": "/x.so",
                                               "token_label": "t", "pin_file": "p"}}  # fmt: skip
    assert parse_config(full, auditor.config).audit == audit
