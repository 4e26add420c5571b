"""A real tuf-signer on a loopback port, over the session's SoftHSM token."""

from __future__ import annotations

import functools
import hashlib
import itertools
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from tuf_signer.audit import AuditRecord, SqliteAuditStore
from tuf_signer.config import Config, load_config
from tuf_signer.model import BinsDelegation
from tuf_signer.policy import bin_for_path, bin_index, bin_name, bins_pattern
from tuf_signer.server import SignerServer
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

# Small enough that a test can exceed it cheaply, large enough for real bins.
TEST_MAX_PAYLOAD = 256 * 1024

# The succinct hash bins the test keys declare (issue 10, finding 1): 256 bins,
# "bins-00".."bins-ff", few enough that a bin of 2,000 targets is quick to fill.
TEST_BINS = BinsDelegation("bins", 8)
TEST_BIN_PATTERN = bins_pattern(TEST_BINS)  # "bins-[0-9a-f][0-9a-f]"
# A key policy for the test keys: timestamp, snapshot and the declared bins.
TEST_ROLES = [("timestamp", 86400), ("snapshot", 86400), (TEST_BIN_PATTERN, 86400)]


def bin_role(i: int) -> str:
    """The name of test bin ``i`` (0..255)."""
    return bin_name(TEST_BINS, i)


@functools.lru_cache(maxsize=4096)
def _paths_in(role: str, n: int, salt: str) -> tuple[str, ...]:
    """``n`` target paths that hash into test bin ``role`` (python-tuf's rule)."""
    candidates = (f"packages/{i:04d}/example-{salt}{i}.tar.gz" for i in itertools.count())
    return tuple(itertools.islice((p for p in candidates if bin_for_path(TEST_BINS, p) == role), n))


class Clock:
    """A clock the test can move; starts at the real time."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


def write_config(directory: Path, hsm: Any, max_payload: int = TEST_MAX_PAYLOAD) -> Path:
    """A server config over the session token, with its own audit database."""
    directory.mkdir(parents=True, exist_ok=True)
    pin_file = directory / "hsm.pin"
    pin_file.write_text(hsm.pin + "\n")
    pin_file.chmod(0o600)
    path = directory / "tuf-signer.toml"
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
insecure = true
max_payload_bytes = {max_payload}
drain_seconds = 5

[audit]
path = "audit.db"

[backends.softhsm]
type = "pkcs11"
module = "{hsm.module}"
token_label = "{hsm.token_label}"
pin_file = "hsm.pin"
env = {{ SOFTHSM2_CONF = "{hsm.conf}" }}

# Plaintext callers are "anonymous"; these tests let them do everything.
[[authz.rules]]
identity = "anonymous"
operations = ["sign", "key-admin", "read-keys", "read-audit"]
keys = ["*"]
roles = ["timestamp", "snapshot", "targets", "bins-*"]
"""
    )
    return path


def write_kms_config(directory: Path, hsm: Any, kms_address: str, call_timeout: float) -> Path:
    """``write_config``'s server (SoftHSM) plus a fake-KMS backend in a key ring of its own."""
    path = write_config(directory, hsm)
    with path.open("a") as config:
        config.write(
            f"""
[backends.kms]
type = "gcpkms"
project = "test-project"
location = "global"
key_ring = "ring-{secrets.token_hex(4)}"
endpoint = "{kms_address}"
call_timeout = {call_timeout}
"""
        )
    return path


@dataclass
class Payloads:
    """TUF ``signed`` payloads built with python-tuf, canonical as it signs them."""

    clock: Clock

    def expires(self, seconds: int = 3600) -> datetime:
        return self.clock.now + timedelta(seconds=seconds)

    def timestamp(self, version: int, snapshot_version: int = 1, **kw: Any) -> bytes:
        ts = Timestamp(
            version=version,
            expires=kw.pop("expires", self.expires()),
            snapshot_meta=MetaFile(snapshot_version),
            **kw,
        )
        return Metadata(ts).signed_bytes

    def snapshot(self, version: int, bins: int = 4, **kw: Any) -> bytes:
        meta = {"targets.json": MetaFile(1)} | {f"bins-{i}.json": MetaFile(1) for i in range(bins)}
        snap = Snapshot(version=version, expires=kw.pop("expires", self.expires()), meta=meta, **kw)
        return Metadata(snap).signed_bytes

    def root(self, version: int = 1) -> bytes:
        return Metadata(Root(version=version, expires=self.expires())).signed_bytes

    def targets(
        self, version: int, n_targets: int = 3, salt: str = "", role: str = "", **kw: Any
    ) -> bytes:
        """Targets metadata; when ``role`` is a test bin, its paths all hash into it."""
        if bin_index(TEST_BINS, role) is not None:
            paths: Any = _paths_in(role, n_targets, salt)
        else:
            paths = (f"packages/{i:04d}/example-{salt}{i}.tar.gz" for i in range(n_targets))
        files = {}
        for i, path in enumerate(paths):
            data = f"{salt}{i}".encode()
            files[path] = TargetFile(
                length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()}, path=path
            )
        t = Targets(version=version, expires=kw.pop("expires", self.expires()), targets=files, **kw)
        return Metadata(t).signed_bytes


@dataclass
class Harness:
    """A running server and stubs to call it."""

    config: Config
    server: SignerServer
    channel: grpc.aio.Channel
    signer: pb_grpc.SignerStub
    admin: pb_grpc.KeyAdminStub
    clock: Clock
    payloads: Payloads
    extra: dict[str, Any] = field(default_factory=dict)

    async def create_key(
        self,
        name: str,
        algorithm: int = pb.ED25519,
        roles: list[tuple[str, int]] | None = None,
        bins: BinsDelegation | None = TEST_BINS,
    ) -> pb.KeyInfo:
        roles = roles or TEST_ROLES
        r = await self.admin.CreateKey(
            pb.CreateKeyRequest(
                name=name,
                algorithm=algorithm,
                roles=[pb.RoleRule(pattern=p, max_validity_seconds=s) for p, s in roles],
                activate=True,
                bins=(
                    pb.BinsDelegation(prefix=bins.prefix, bit_length=bins.bit_length)
                    if bins is not None
                    else None
                ),
            )
        )
        return r.key

    async def sign(
        self, key: str, payload: bytes, role: str = "", keyid: str = ""
    ) -> pb.SignResponse:
        return await self.signer.Sign(
            pb.SignRequest(key=key, role=role, payload=payload, expected_keyid=keyid)
        )

    def records(self) -> list[AuditRecord]:
        store = SqliteAuditStore(self.config.audit.path)
        try:
            return list(store.records())
        finally:
            store.close()


async def start_harness(config_path: Path, clock: Clock) -> Harness:
    config = load_config(config_path)
    server = SignerServer(config, clock=clock)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return Harness(
        config=config,
        server=server,
        channel=channel,
        signer=pb_grpc.SignerStub(channel),
        admin=pb_grpc.KeyAdminStub(channel),
        clock=clock,
        payloads=Payloads(clock),
    )


async def stop_harness(h: Harness) -> None:
    await h.channel.close()
    await h.server.stop(grace=5)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def config_path(tmp_path: Path, softhsm: Any) -> Path:
    return write_config(tmp_path / "signer", softhsm)


@pytest.fixture
async def harness(config_path: Path, clock: Clock) -> AsyncIterator[Harness]:
    h = await start_harness(config_path, clock)
    try:
        yield h
    finally:
        await stop_harness(h)


@pytest.fixture
async def restart(config_path: Path, clock: Clock) -> AsyncIterator[Callable[[Harness], Any]]:
    """Stop a harness and start a new server over the same config and store."""
    started: list[Harness] = []

    async def do(h: Harness) -> Harness:
        await stop_harness(h)
        new = await start_harness(config_path, clock)
        started.append(new)
        return new

    yield do
    for h in started:
        await stop_harness(h)


# --- mutual TLS ------------------------------------------------------------------------

BACKEND = "uri:spiffe://tuf-signer.dev/backend"
ADMIN = "uri:spiffe://tuf-signer.dev/admin"
NOBODY = "uri:spiffe://tuf-signer.dev/nobody"


@dataclass
class Pki:
    """A dev CA with client certificates, plus a certificate from a stranger CA."""

    directory: Path
    ca: Path

    def creds(self, name: str | None, ca_dir: str = "tls") -> grpc.ChannelCredentials:
        tls = self.directory / ca_dir
        if name is None:
            return grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=(tls / f"{name}.key").read_bytes(),
            certificate_chain=(tls / f"{name}.crt").read_bytes(),
        )


def make_pki(directory: Path) -> Pki:
    from tuf_signer.cli._devcerts import DevCa

    ca = DevCa(directory / "tls")
    ca.issue("server", server=True)
    for name in ("backend", "admin", "nobody"):
        ca.issue(name, server=False)
    stranger = DevCa(directory / "stranger")
    stranger.issue("backend", server=False)
    return Pki(directory, ca.cert)


TLS_POLICY = f"""
[[authz.rules]]
identity = "{BACKEND}"
operations = ["sign", "read-keys"]
keys = ["k"]
roles = ["timestamp", "snapshot", "bins-*"]

[[authz.rules]]
identity = "{ADMIN}"
operations = ["key-admin", "read-keys", "read-audit"]
"""


def write_tls_config(
    directory: Path, hsm: Any, extra: str = "", policy: str = TLS_POLICY, server: str = ""
) -> Path:
    """A config with mutual TLS over ``make_pki(directory)`` and ``policy``.

    ``server`` adds lines to ``[server]``; ``extra`` adds tables before the policy.
    """
    path = write_config(directory, hsm)
    text = path.read_text().replace("insecure = true\n", server)
    text = text.split("# Plaintext callers")[0]
    text = text.replace(
        "[audit]",
        '[server.tls]\ncert = "tls/server.crt"\nkey = "tls/server.key"\n'
        'client_ca = "tls/ca.crt"\n\n[audit]',
    )
    path.write_text(text + extra + policy)
    return path


@dataclass
class TlsHarness:
    """A server with mutual TLS; ``as_(name)`` gives stubs for one client identity."""

    config_path: Path
    pki: Pki
    server: SignerServer
    clock: Clock
    payloads: Payloads
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def channel(self, name: str | None, ca_dir: str = "tls") -> grpc.aio.Channel:
        ch = grpc.aio.secure_channel(self.address, self.pki.creds(name, ca_dir))
        self.channels.append(ch)
        return ch

    def signer(self, name: str | None, ca_dir: str = "tls") -> pb_grpc.SignerStub:
        return pb_grpc.SignerStub(self.channel(name, ca_dir))

    def admin(self, name: str | None) -> pb_grpc.KeyAdminStub:
        return pb_grpc.KeyAdminStub(self.channel(name))

    def audit(self, name: str | None) -> pb_grpc.AuditLogStub:
        return pb_grpc.AuditLogStub(self.channel(name))

    def records(self) -> list[AuditRecord]:
        store = SqliteAuditStore(self.server.config.audit.path)
        try:
            return list(store.records())
        finally:
            store.close()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "signer")


@pytest.fixture
async def tls_harness(
    tmp_path: Path, softhsm: Any, pki: Pki, clock: Clock, request: pytest.FixtureRequest
) -> AsyncIterator[TlsHarness]:
    """A mutual-TLS server with key ``k`` (timestamp, snapshot, targets, TEST_BINS) created.

    Parametrise indirectly with a dict to add config text: ``{"extra": "[limits]..."}``.
    """
    options = getattr(request, "param", {})
    path = write_tls_config(
        tmp_path / "signer",
        softhsm,
        extra=options.get("extra", ""),
        server=options.get("server", ""),
    )
    server = SignerServer(load_config(path), clock=clock)
    await server.start()
    h = TlsHarness(path, pki, server, clock, Payloads(clock))
    await h.admin("admin").CreateKey(
        pb.CreateKeyRequest(
            name="k",
            roles=[
                pb.RoleRule(pattern=p, max_validity_seconds=86400)
                for p in ("timestamp", "snapshot", "targets", TEST_BIN_PATTERN)
            ],
            activate=True,
            bins=pb.BinsDelegation(prefix=TEST_BINS.prefix, bit_length=TEST_BINS.bit_length),
        )
    )
    try:
        yield h
    finally:
        for ch in h.channels:
            await ch.close()
        await server.stop(grace=5)
