"""The services under test as subprocesses: tuf-signer, the echo ceiling, notary-signer.

Each one gets its own temporary directory and a free loopback port, is
stopped with SIGTERM (SIGKILL only after a bounded wait, and only its own
pid), and is measured from ``/proc``: CPU seconds and RSS of the whole
process tree, so multi-process serving is counted in full.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOKEN_LABEL = "bench"
BENCH_IDENTITY = "uri:spiffe://tuf-signer.dev/bench"
START_TIMEOUT = 60.0  # seconds for a server to answer after its start
STOP_TIMEOUT = 30.0  # seconds for a server to drain and exit after SIGTERM
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    """A benchmark could not run; the message says why."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the kernel's choice; released before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int) -> None:
    """Wait until something listens on 127.0.0.1:``port`` (bounded by START_TIMEOUT)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot); None once it is gone or a zombie."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])  # starttime, field 22 of proc(5)


def process_tree(pids: list[int]) -> list[int]:
    """``pids`` and all their living descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.append(pid)
            todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the process trees (including reaped children), seconds."""
    total = 0
    for pid in process_tree(pids):
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime: fields 14-17 of proc(5), counted from 1.
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / _CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of the process trees, bytes."""
    total = 0
    for pid in process_tree(pids):
        with contextlib.suppress(OSError, IndexError):  # it may have exited meanwhile
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    return total


@dataclasses.dataclass
class Tls:
    """Client TLS material for a server (``cert``/``key`` empty: server-auth only)."""

    ca: Path
    cert: Path
    key: Path
    server_name: str = "localhost"

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.ca.read_bytes(), self.key.read_bytes(), self.cert.read_bytes()
        )

    def spec(self) -> dict[str, str]:
        return {
            "ca": str(self.ca),
            "cert": str(self.cert),
            "key": str(self.key),
            "server_name": self.server_name,
        }


def make_pki(directory: Path) -> Tls:
    """A development CA with a loopback server certificate and the bench client's."""
    from tuf_signer.cli._devcerts import DevCa

    ca = DevCa(directory)
    ca.issue("server", server=True)
    client = ca.issue("bench", server=False)
    return Tls(ca.cert, client.cert, client.key)


class Service:
    """A running subprocess service (or several, all on one port) at ``address``."""

    name = "service"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tls: Tls | None = None
        self.orphans: list[int] = []  # descendants that outlived their parent

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def cpu(self) -> float:
        return cpu_seconds(self.pids)

    def rss(self) -> int:
        return rss_bytes(self.pids)

    def _spawn(self, argv: list[str], log: str, env: dict[str, str] | None = None) -> None:
        with open(self.root / log, "ab") as out:
            self.procs.append(
                subprocess.Popen(
                    argv,
                    cwd=self.root,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **(env or {})},
                    start_new_session=True,
                )
            )

    def _log_tail(self) -> str:
        lines: list[str] = []
        for log in sorted(self.root.glob("*.log")):
            lines += log.read_text(errors="replace").splitlines()[-15:]
        return "\n".join(lines)

    def channel(self) -> grpc.Channel:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        if self.tls is None:
            return grpc.insecure_channel(self.address, options=options)
        return grpc.secure_channel(self.address, self.tls.channel_credentials(), options=options)

    def wait_ready(self, probe: Any) -> None:
        """Call ``probe(channel)`` until it succeeds (bounded by START_TIMEOUT).

        Raises:
            BenchError: a process exited, or the service did not answer in time.
        """
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise BenchError(
                        f"{self.name} exited with status {p.returncode}:\n{self._log_tail()}"
                    )
            try:
                with self.channel() as ch:
                    probe(ch)
                return
            except grpc.RpcError as e:
                last = f"{e.code().name}: {e.details()}"
                time.sleep(0.1)
        raise BenchError(
            f"{self.name} did not answer within {START_TIMEOUT:.0f} s ({last}):\n{self._log_tail()}"
        )

    def stop(self) -> list[int | None]:
        """SIGTERM each process, wait for it (bounded), SIGKILL a straggler; return codes.

        Descendants (worker processes) still running once their parent has
        exited are listed in ``self.orphans``, then stopped the same way, by pid.
        """
        tree = {pid: _start_time(pid) for pid in process_tree(self.pids)}
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=STOP_TIMEOUT))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
                codes.append(None)
        mine = set(self.pids)
        self.procs = []
        deadline = time.monotonic() + 5.0
        for pid, started in tree.items():
            # Same pid and same start time: the very process we saw, not a reused pid.
            while pid not in mine and started and _start_time(pid) == started:
                if time.monotonic() > deadline:
                    self.orphans.append(pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.1)
        return codes


# --- tuf-signer -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServerFeatures:
    """What the tuf-signer under test supports (the server is changing under us)."""

    workers: bool  # `server.workers` (multi-process serving)
    max_batch_items: int | None  # default of `server.max_batch_items`, if it exists
    log: bool  # the transparency log: audit key, checkpoints, witnesses (issue 13)
    ops: bool  # the ops listener: /metrics, with the Sign stages' histograms (issue 15)


def server_features() -> ServerFeatures:
    """Read the current config schema: which server settings exist."""
    from tuf_signer.config import ServerConfig

    fields = {f.name: f for f in dataclasses.fields(ServerConfig)}
    batch = fields.get("max_batch_items")
    default = batch.default if batch is not None else None
    import tuf_signer.config as config

    return ServerFeatures(
        workers="workers" in fields,
        max_batch_items=default if isinstance(default, int) else None,
        log=hasattr(config, "LogConfig"),
        ops="ops" in {f.name for f in dataclasses.fields(config.Config)},
    )


# The transparency log is on in the bench (as in production) unless BENCH_LOG=0.
LOG_ENV = "BENCH_LOG"
LOG_ORIGIN = "bench.tuf-signer.test/audit"


_CONFIG = """\
# Written by the tuf-signer benchmarks (bench/). Limits are raised so the
# generator measures the signer, not the per-identity rate limit.
[server]
listen = "{listen}"
max_payload_bytes = 8388608
drain_seconds = 10
call_deadline_seconds = 60
{server_extra}
[limits]
max_concurrent = 100000
rate = 1000000000
burst = 1000000000

{ops}
[audit]
store = "sqlite"
path = "audit.db"
{audit_extra}
[backends.softhsm]
type = "pkcs11"
module = "{module}"
token_label = "{token}"
pin_file = "hsm.pin"
env = {{ SOFTHSM2_CONF = "{conf}" }}

[[authz.rules]]
identity = "{identity}"
operations = ["sign", "key-admin", "read-keys", "read-audit"]
keys = ["*"]
roles = ["timestamp", "snapshot", "bins-*"]
"""

# The bench keys declare PEP 458's bins:14 (tuf-signer keys create … --bins bins:14)
# and allow exactly those bins.
BINS = ("bins", 14)
ROLE_RULES = (
    ("timestamp", 86400),
    ("snapshot", 86400),
    ("bins-[0-3][0-9a-f][0-9a-f][0-9a-f]", 86400),
)


@dataclasses.dataclass(frozen=True)
class Hsm:
    """A SoftHSM token of the bench's own."""

    module: Path
    conf: Path
    label: str
    pin_file: Path

    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}


def make_token(directory: Path) -> Hsm:
    """A fresh SoftHSM token under ``directory``."""
    from tuf_signer.testing.softhsm import init_token, softhsm_module_path, write_softhsm_config

    directory.mkdir(parents=True, exist_ok=True)
    conf = write_softhsm_config(directory)
    pin = secrets.token_hex(8)
    init_token(conf, TOKEN_LABEL, pin, secrets.token_hex(8))
    pin_file = directory / "hsm.pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    return Hsm(softhsm_module_path(), conf, TOKEN_LABEL, pin_file)


class TufSigner(Service):
    """``tuf-signer serve`` on its own token and audit database.

    Args:
        root: a fresh directory for config, token, audit database and log.
        tls: mutual TLS (the production setting) instead of a plaintext
            loopback listener whose callers are ``anonymous``.
        workers: ``server.workers``; written only when the server supports it.
    """

    name = "tuf-signer"

    def __init__(self, root: Path, *, tls: bool = False, workers: int = 1) -> None:
        super().__init__(root)
        root.mkdir(parents=True, exist_ok=True)
        self.features = server_features()
        self.workers = workers if self.features.workers else 1
        self.hsm = make_token(root / "hsm")
        shutil.copy(self.hsm.pin_file, root / "hsm.pin")
        (root / "hsm.pin").chmod(0o600)
        server_extra = ""
        if tls:
            self.tls = make_pki(root / "tls")
            server_extra += (
                '\n[server.tls]\ncert = "tls/server.crt"\nkey = "tls/server.key"\n'
                'client_ca = "tls/ca.crt"\n'
            )
        else:
            server_extra += "insecure = true  # plaintext loopback: TLS kept out of the figure\n"
        if self.features.workers:
            server_extra = f"workers = {self.workers}\n" + server_extra
        self.config = root / "tuf-signer.toml"
        # Its /metrics tell where a Sign's time goes (``stage_seconds``).
        self.ops_port = free_port() if self.features.ops else 0
        config = functools.partial(
            _CONFIG.format,
            listen=self.address,
            server_extra=server_extra,
            module=self.hsm.module,
            token=self.hsm.label,
            conf=self.hsm.conf,
            identity=BENCH_IDENTITY if tls else "anonymous",
            ops=f'[ops]\nlisten = "127.0.0.1:{self.ops_port}"\n' if self.ops_port else "",
        )
        self.config.write_text(config(audit_extra=""))
        self.log = self.features.log and os.environ.get(LOG_ENV, "1") != "0"
        self.witness: Path | None = None
        if self.log:
            self.config.write_text(config(audit_extra=self._log_settings(root)))
        self.keyids: dict[str, str] = {}
        self._next_version = 1

    def _log_settings(self, root: Path) -> str:
        """Make the audit key and a witness; the ``[audit]`` settings that use them."""
        from tuf_signer.witness import create_witness

        made = subprocess.run(
            [
                *(str(BIN / "tuf-signer"), "audit", "create-key"),
                *("--config", str(self.config), "--origin", LOG_ORIGIN),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.splitlines()
        key = next(line for line in made if line.startswith("key = "))
        vkey = next(line for line in made if line.startswith(f"# {LOG_ORIGIN}+"))[2:]
        self.witness_port = free_port()
        self.witness, witness_vkey = create_witness(
            root / "witness",
            "bench.tuf-signer.test/witness",
            f"127.0.0.1:{self.witness_port}",
            [(LOG_ORIGIN, vkey)],
        )
        return (
            f'origin = "{LOG_ORIGIN}"\n{key}\n'
            # On, far above what a run signs: the gate runs on every Sign.
            "max_unwitnessed_records = 100000000\n"
            f'[[audit.witnesses]]\nurl = "http://127.0.0.1:{self.witness_port}"\n'
            f'vkey = "{witness_vkey}"\n'
        )

    @property
    def audit_dir(self) -> Path:
        """The directory of the audit store (``[audit] path``, relative to the config)."""
        return (self.config.parent / "audit.db").parent

    def stage_seconds(self) -> dict[str, tuple[float, int]]:
        """``tuf_signer_sign_stage_seconds`` so far, all workers: stage -> (sum, count).

        Empty when the server has no ops listener.
        """
        if not self.ops_port:
            return {}
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.ops_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "tuf_signer_sign_stage_seconds":
                continue
            for sample in family.samples:
                stage = sample.labels.get("stage", "")
                if sample.name.endswith("_sum"):
                    sums[stage] = sums.get(stage, 0.0) + sample.value
                elif sample.name.endswith("_count"):
                    counts[stage] = counts.get(stage, 0) + int(sample.value)
        return {stage: (sums[stage], counts.get(stage, 0)) for stage in sums}

    def take_versions(self, count: int) -> int:
        """Reserve ``count`` metadata versions; returns the first.

        One counter for every role of this server: whatever a workload signs
        next is above anything signed before, so no request is a rollback.
        """
        base = self._next_version
        self._next_version += count
        return base

    def start(self, keys: dict[str, int] | None = None) -> TufSigner:
        """Start the server and create ``keys`` (name -> pb algorithm), ACTIVE."""
        if self.witness is not None:  # counted with the server: same machine, same cores
            self._spawn(
                [str(BIN / "tuf-signer"), "witness", "serve", "--config", str(self.witness)],
                "witness.log",
            )
            _wait_port(self.witness_port)
        self._spawn([str(BIN / "tuf-signer"), "serve", "--config", str(self.config)], "server.log")
        self.wait_ready(lambda ch: pb_grpc.SignerStub(ch).GetPublicKeys(pb.GetPublicKeysRequest()))
        # One channel, so one connection and one worker creates every key, as
        # an operator's session would. (With server.workers, keys created by
        # two workers a few ms apart were, at times, invisible to one of them.)
        with self.channel() as ch:
            for name, algorithm in (keys or {"ed": pb.ED25519}).items():
                r = pb_grpc.KeyAdminStub(ch).CreateKey(
                    pb.CreateKeyRequest(
                        name=name,
                        algorithm=algorithm,
                        roles=[
                            pb.RoleRule(pattern=p, max_validity_seconds=s) for p, s in ROLE_RULES
                        ],
                        activate=True,
                        bins=pb.BinsDelegation(prefix=BINS[0], bit_length=BINS[1]),
                    ),
                    timeout=30,
                )
                self.keyids[name] = r.key.versions[0].keyid
        return self

    def sign_batch_implemented(self) -> bool:
        """Whether Signer.SignBatch answers anything but UNIMPLEMENTED (probed empty)."""
        with self.channel() as ch:
            try:
                pb_grpc.SignerStub(ch).SignBatch(pb.SignBatchRequest(), timeout=10)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return False
                if e.code() == grpc.StatusCode.INTERNAL:
                    # The error interceptor turns the generated stub's
                    # NotImplementedError into INTERNAL: look at the servicer.
                    from tuf_signer.server._grpc import SignerServicer
                    from tuf_signer.v1.signer_pb2_grpc import SignerServicer as Generated

                    return SignerServicer.SignBatch is not Generated.SignBatch
        return True

    def verify_audit(self) -> tuple[bool, str]:
        """``tuf-signer audit verify`` on this server's store (run it once stopped)."""
        done = subprocess.run(
            [str(BIN / "tuf-signer"), "audit", "verify", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        return done.returncode == 0, (done.stdout + done.stderr).strip()


# --- the echo ceiling -------------------------------------------------------------


class Echo(Service):
    """The gRPC echo ceiling: ``processes`` grpc.aio servers sharing one port (SO_REUSEPORT).

    With ``tls`` (a signer's client TLS material), it requires mutual TLS with
    that signer's own server certificate, so both pay the same handshakes and
    record encryption.
    """

    name = "echo"

    def __init__(self, root: Path, processes: int = 1, tls: Tls | None = None) -> None:
        super().__init__(root)
        root.mkdir(parents=True, exist_ok=True)
        self.processes = processes
        self.tls = tls

    def start(self) -> Echo:
        argv = [sys.executable, "-m", "bench.echo_server", "--listen", self.address]
        if self.tls is not None:
            argv += ["--tls-dir", str(self.tls.ca.parent)]  # make_pki's server.crt, server.key
        for i in range(self.processes):
            self._spawn(argv, f"echo-{i}.log", env={"PYTHONPATH": str(REPO)})
        self.wait_ready(lambda ch: pb_grpc.SignerStub(ch).Sign(pb.SignRequest(), timeout=5))
        return self


# --- notary-signer ------------------------------------------------------------------


class Notary(Service):
    """Notary's ``notary-signer``: memory storage, mutual TLS, log level error."""

    name = "notary-signer"

    def __init__(self, root: Path, tls: Tls, stubs: Any) -> None:
        super().__init__(root)
        root.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.stubs = stubs
        tls_dir = tls.ca.parent
        (root / "signer.json").write_text(
            json.dumps(
                {
                    "server": {
                        "grpc_addr": self.address,
                        "tls_cert_file": str(tls_dir / "server.crt"),
                        "tls_key_file": str(tls_dir / "server.key"),
                        "client_ca_file": str(tls.ca),
                    },
                    # `debug` logs every payload; error is its default and its quietest.
                    "logging": {"level": "error"},
                    "storage": {"backend": "memory"},
                }
            )
        )

    def start(self) -> Notary:
        pb2, grpc2 = self.stubs
        exe = shutil.which("notary-signer") or "notary-signer"
        self._spawn([exe, "-config", str(self.root / "signer.json")], "notary.log")

        def probe(ch: grpc.Channel) -> None:
            with contextlib.suppress(grpc.RpcError):
                grpc2.KeyManagementStub(ch).GetKeyInfo(pb2.KeyID(ID="none"), timeout=5)
                return
            # NOT_FOUND means it is up; anything else (UNAVAILABLE) is retried.
            try:
                grpc2.KeyManagementStub(ch).GetKeyInfo(pb2.KeyID(ID="none"), timeout=5)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    raise

        self.wait_ready(probe)
        return self

    def create_key(self, algorithm: str) -> str:
        """A new key (``ed25519`` or ``ecdsa``) in notary's memory store; returns its id."""
        pb2, grpc2 = self.stubs
        with self.channel() as ch:
            r = grpc2.KeyManagementStub(ch).CreateKey(
                pb2.CreateKeyRequest(algorithm=algorithm, gun="bench", role="targets"),
                timeout=30,
            )
        return str(r.keyInfo.keyID.ID)
