"""A fake Google Cloud KMS: a real gRPC server for the calls tuf-signer makes.

It serves ``google.cloud.kms.v1.KeyManagementService`` on a loopback port, so
google-cloud-kms clients talk to it exactly as to Google: same method paths,
same protobuf messages (google-cloud-kms ships no servicer, so the handlers are
registered with ``grpc.method_handlers_generic_handler``). Keys are real
(``cryptography``), signatures verify, and the CRC32C integrity fields are
computed and checked as KMS does.

Served: CreateKeyRing, GetKeyRing, ListKeyRings, CreateCryptoKey, GetCryptoKey,
ListCryptoKeys, CreateCryptoKeyVersion, GetCryptoKeyVersion,
ListCryptoKeyVersions, UpdateCryptoKeyVersion (state only), GetPublicKey and
AsymmetricSign, for the algorithms EC_SIGN_ED25519, EC_SIGN_P256_SHA256 and
RSA_SIGN_PSS_3072_SHA256. Like KMS, new versions may start PENDING_GENERATION
(``generation_delay``), and only ENABLED versions serve public keys and sign.
No authentication and no pagination; state lives in memory.

Fault switches (thread-safe, also reachable over gRPC for a fake in another
process, see ``RemoteFakeKms``): latency, the next N calls failing with any
status (UNAVAILABLE, RESOURCE_EXHAUSTED...), denied IAM permissions, and
corrupted answers (``Corruption``). ``call_counts`` tells how many calls
each method received.

In-process::

    with FakeKms() as kms:
        backend = kms.backend("kms", key_ring="ring")   # a GcpKmsBackend on it
        kms.fail_next(grpc.StatusCode.UNAVAILABLE, count=2)

As its own process (prints ``FAKE_KMS_ADDRESS=HOST:PORT`` once listening)::

    python -m tuf_signer.testing.fake_kms --port 0
"""

from __future__ import annotations

import argparse
import collections
import enum
import hashlib
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NoReturn

import google_crc32c
import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from google.cloud.kms_v1.types import resources, service

from tuf_signer.keys import kms_transport

if TYPE_CHECKING:
    from google.cloud.kms_v1.services.key_management_service.transports import (
        KeyManagementServiceGrpcAsyncIOTransport,
    )

    from tuf_signer.keys import GcpKmsBackend

__all__ = ["CONTROL_SERVICE", "SERVICE", "Corruption", "FakeKms", "RemoteFakeKms", "main"]

SERVICE: Final = "google.cloud.kms.v1.KeyManagementService"
CONTROL_SERVICE: Final = "tuf_signer.testing.FakeKmsControl"

_ALGORITHMS: Final = ("EC_SIGN_ED25519", "EC_SIGN_P256_SHA256", "RSA_SIGN_PSS_3072_SHA256")
_ID: Final = re.compile(r"[a-zA-Z0-9_-]{1,63}")
_LOCATION: Final = re.compile(r"projects/[^/]+/locations/[^/]+")
_PSS_SALT = 32  # bytes: KMS RSA_SIGN_PSS_*_SHA256 uses the digest length

_State = resources.CryptoKeyVersion.CryptoKeyVersionState
_Algorithm = resources.CryptoKeyVersion.CryptoKeyVersionAlgorithm
_Purpose = resources.CryptoKey.CryptoKeyPurpose

# The IAM permission KMS checks for each method (for ``deny``).
PERMISSIONS: Final = {
    "CreateKeyRing": "cloudkms.keyRings.create",
    "GetKeyRing": "cloudkms.keyRings.get",
    "ListKeyRings": "cloudkms.keyRings.list",
    "CreateCryptoKey": "cloudkms.cryptoKeys.create",
    "GetCryptoKey": "cloudkms.cryptoKeys.get",
    "ListCryptoKeys": "cloudkms.cryptoKeys.list",
    "CreateCryptoKeyVersion": "cloudkms.cryptoKeyVersions.create",
    "GetCryptoKeyVersion": "cloudkms.cryptoKeyVersions.get",
    "ListCryptoKeyVersions": "cloudkms.cryptoKeyVersions.list",
    "UpdateCryptoKeyVersion": "cloudkms.cryptoKeyVersions.update",
    "GetPublicKey": "cloudkms.cryptoKeyVersions.viewPublicKey",
    "AsymmetricSign": "cloudkms.cryptoKeyVersions.useToSign",
}


class Corruption(enum.Enum):
    """Ways to damage an answer, as a faulty network or a misbehaving KMS would."""

    SIGNATURE = "signature"
    """AsymmetricSign: a bit of the signature flipped, with a CRC32C that matches
    the flipped bytes, so only verifying the signature can catch it."""
    SIGNATURE_CRC32C = "signature_crc32c"
    """AsymmetricSign: ``signature_crc32c`` does not match the signature."""
    UNVERIFIED = "unverified"
    """AsymmetricSign: ``verified_*_crc32c`` false, as if the request was damaged."""
    PEM_CRC32C = "pem_crc32c"
    """GetPublicKey: ``pem_crc32c`` does not match the PEM."""
    WRONG_NAME = "wrong_name"
    """AsymmetricSign and GetPublicKey: the answer names another key version."""


_CORRUPTS: Final = {
    Corruption.SIGNATURE: "AsymmetricSign",
    Corruption.SIGNATURE_CRC32C: "AsymmetricSign",
    Corruption.UNVERIFIED: "AsymmetricSign",
    Corruption.PEM_CRC32C: "GetPublicKey",
}


class _Abort(Exception):
    """A status to answer with (raised by handlers, turned into ``context.abort``)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


def _now_pb(target: Any, seconds: float) -> None:
    target.FromNanoseconds(int(seconds * 1e9))


@dataclass
class _Version:
    name: str
    algorithm: str
    protection_level: int
    private: PrivateKeyTypes
    state: str
    created: float
    ready_at: float
    pem: str

    def refresh(self, now: float) -> None:
        if self.state == "PENDING_GENERATION" and now >= self.ready_at:
            self.state = "ENABLED"


@dataclass
class _Key:
    name: str
    algorithm: str
    protection_level: int
    labels: dict[str, str]
    created: float
    versions: list[_Version] = field(default_factory=list)


@dataclass
class _Failure:
    code: grpc.StatusCode
    message: str
    remaining: int
    method: str | None


@dataclass
class _Faults:
    latency: dict[str | None, float] = field(default_factory=dict)
    failures: list[_Failure] = field(default_factory=list)
    corruptions: dict[Corruption, int] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)


def _generate(algorithm: str) -> PrivateKeyTypes:
    if algorithm == "EC_SIGN_ED25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "EC_SIGN_P256_SHA256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def _sign(private: PrivateKeyTypes, algorithm: str, data: bytes | None, digest: bytes) -> bytes:
    if isinstance(private, ed25519.Ed25519PrivateKey):
        assert data is not None
        return private.sign(data)
    if data is not None:
        digest = hashlib.sha256(data).digest()
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return private.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    assert isinstance(private, rsa.RSAPrivateKey)
    return private.sign(
        digest,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=_PSS_SALT),
        Prehashed(hashes.SHA256()),
    )


class FakeKms:
    """The fake KMS server and its state (see the module docstring).

    Args:
        host: a loopback address to listen on.
        port: 0 picks a free port.
        workers: threads serving calls (latency faults hold one each).
        generation_delay: seconds a new version stays PENDING_GENERATION.

    Raises:
        ValueError: ``host`` is not a loopback address.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        workers: int = 32,
        generation_delay: float = 0.0,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            raise ValueError(f"the fake KMS listens on loopback only, not {host!r}")
        self._bind = f"[::1]:{port}" if host in ("::1", "[::1]") else f"{host}:{port}"
        self._host = host
        self._workers = workers
        self.generation_delay = generation_delay
        self._lock = threading.Lock()
        self._rings: dict[str, float] = {}
        self._keys: dict[str, _Key] = {}
        self._versions: dict[str, _Version] = {}
        self._faults = _Faults()
        self._calls: collections.Counter[str] = collections.Counter()
        self._server: grpc.Server | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``HOST:PORT`` to connect to (valid once started)."""
        host = "[::1]" if self._host in ("::1", "[::1]") else self._host
        return f"{host}:{self.port}"

    def start(self) -> str:
        """Listen and serve on background threads; return the address."""
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="fake-kms"),
            options=[("grpc.so_reuseport", 0)],
        )
        server.add_generic_rpc_handlers((self._kms_handler(), self._control_handler()))
        self.port = server.add_insecure_port(self._bind)
        server.start()
        self._server = server
        return self.address

    def stop(self, grace: float | None = 0.5) -> None:
        """Stop serving (the state is kept). Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()

    def __enter__(self) -> FakeKms:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def transport(self) -> KeyManagementServiceGrpcAsyncIOTransport:
        """A new async transport to this fake: a ``GcpKmsBackend`` transport factory."""
        return await kms_transport(self.address)()

    def backend(
        self,
        name: str = "kms",
        *,
        project: str = "test-project",
        location: str = "global",
        key_ring: str = "tuf-signer",
        **kwargs: Any,
    ) -> GcpKmsBackend:
        """A new, not yet started ``GcpKmsBackend`` on this fake."""
        from tuf_signer.keys import GcpKmsBackend

        return GcpKmsBackend(
            name,
            project=project,
            location=location,
            key_ring=key_ring,
            transport=self.transport,
            **kwargs,
        )

    # --- fault switches ------------------------------------------------------------------

    def fail_next(
        self,
        code: grpc.StatusCode | str,
        count: int = 1,
        *,
        message: str = "",
        method: str | None = None,
    ) -> None:
        """Answer the next ``count`` calls (of ``method``, or any) with status ``code``."""
        status = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode[code]
        with self._lock:
            self._faults.failures.append(
                _Failure(status, message or f"fake KMS: injected {status.name}", count, method)
            )

    def set_latency(self, seconds: float, method: str | None = None) -> None:
        """Delay every call (of ``method``, or any) by ``seconds`` before answering."""
        with self._lock:
            self._faults.latency[method] = seconds

    def corrupt_next(self, corruption: Corruption | str, count: int = 1) -> None:
        """Damage the next ``count`` answers the corruption applies to."""
        kind = Corruption(corruption)
        with self._lock:
            self._faults.corruptions[kind] = self._faults.corruptions.get(kind, 0) + count

    def deny(self, permission: str) -> None:
        """Refuse the calls that need an IAM permission, e.g. ``cloudkms.keyRings.get``."""
        if permission not in PERMISSIONS.values():
            raise ValueError(f"unknown permission {permission!r}")
        with self._lock:
            self._faults.denied.add(permission)

    def allow(self, permission: str) -> None:
        """Undo ``deny``."""
        with self._lock:
            self._faults.denied.discard(permission)

    def swap_key(self, name: str) -> None:
        """Serve another key pair under the key version ``name`` from now on.

        GetPublicKey and AsymmetricSign both use the new pair, as a KMS that
        mixed up its keys would: the answers are self-consistent, so only a
        check against the public key registered earlier can tell.

        Raises:
            KeyError: no such version.
        """
        with self._lock:
            algorithm = self._versions[name].algorithm
        private = _generate(algorithm)
        pem = (
            private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        with self._lock:
            version = self._versions[name]
            version.private, version.pem = private, pem

    def reset_faults(self) -> None:
        """Clear every fault switch."""
        with self._lock:
            self._faults = _Faults()

    def call_counts(self) -> dict[str, int]:
        """Calls received per method (including those answered by a fault)."""
        with self._lock:
            return dict(self._calls)

    def version_state(self, name: str) -> str:
        """The state of a key version, e.g. ``ENABLED`` or ``DISABLED``.

        Raises:
            KeyError: no such version.
        """
        with self._lock:
            version = self._versions[name]
            version.refresh(time.time())
            return version.state

    def version_names(self, crypto_key: str = "") -> list[str]:
        """Every key version (of one crypto key, if given), in creation order."""
        with self._lock:
            return [n for n in self._versions if n.startswith(crypto_key + "/") or not crypto_key]

    # --- gRPC plumbing -------------------------------------------------------------------

    def _kms_handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[Callable[[Any], Any], type[Any], type[Any]]] = {
            "CreateKeyRing": (
                self._create_key_ring,
                service.CreateKeyRingRequest,
                resources.KeyRing,
            ),
            "GetKeyRing": (self._get_key_ring, service.GetKeyRingRequest, resources.KeyRing),
            "ListKeyRings": (
                self._list_key_rings,
                service.ListKeyRingsRequest,
                service.ListKeyRingsResponse,
            ),
            "CreateCryptoKey": (
                self._create_crypto_key,
                service.CreateCryptoKeyRequest,
                resources.CryptoKey,
            ),
            "GetCryptoKey": (
                self._get_crypto_key,
                service.GetCryptoKeyRequest,
                resources.CryptoKey,
            ),
            "ListCryptoKeys": (
                self._list_crypto_keys,
                service.ListCryptoKeysRequest,
                service.ListCryptoKeysResponse,
            ),
            "CreateCryptoKeyVersion": (
                self._create_version,
                service.CreateCryptoKeyVersionRequest,
                resources.CryptoKeyVersion,
            ),
            "GetCryptoKeyVersion": (
                self._get_version,
                service.GetCryptoKeyVersionRequest,
                resources.CryptoKeyVersion,
            ),
            "ListCryptoKeyVersions": (
                self._list_versions,
                service.ListCryptoKeyVersionsRequest,
                service.ListCryptoKeyVersionsResponse,
            ),
            "UpdateCryptoKeyVersion": (
                self._update_version,
                service.UpdateCryptoKeyVersionRequest,
                resources.CryptoKeyVersion,
            ),
            "GetPublicKey": (
                self._get_public_key,
                service.GetPublicKeyRequest,
                resources.PublicKey,
            ),
            "AsymmetricSign": (
                self._asymmetric_sign,
                service.AsymmetricSignRequest,
                service.AsymmetricSignResponse,
            ),
        }
        handlers = {}
        for method, (fn, request_type, response_type) in methods.items():
            # The raw protobuf classes under the proto-plus wrappers: the same
            # wire format, without the wrapping cost on every call.
            request_pb, response_pb = request_type.pb(), response_type.pb()
            handlers[method] = grpc.unary_unary_rpc_method_handler(
                self._serve(method, fn),
                request_deserializer=request_pb.FromString,
                response_serializer=response_pb.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _serve(self, method: str, fn: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                self._before(method, request, context)
                return fn(request)
            except _Abort as e:
                context.abort(e.code, e.message)

        return handle

    def _before(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        """Count the call and apply latency, failure and permission faults."""
        with self._lock:
            self._calls[method] += 1
            faults = self._faults
            delay = faults.latency.get(method, faults.latency.get(None, 0.0))
            failure = next(
                (f for f in faults.failures if f.remaining > 0 and f.method in (None, method)),
                None,
            )
            if failure is not None:
                failure.remaining -= 1
                faults.failures = [f for f in faults.failures if f.remaining > 0]
            permission = PERMISSIONS[method]
            denied = permission in faults.denied
        end = time.monotonic() + delay
        while delay > 0 and context.is_active() and time.monotonic() < end:
            time.sleep(min(0.01, end - time.monotonic()))
        if failure is not None:
            raise _Abort(failure.code, failure.message)
        if denied:
            resource = getattr(request, "name", "") or getattr(request, "parent", "")
            if not resource:
                resource = request.crypto_key_version.name
            raise _Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission '{permission}' denied on resource '{resource}' (or it may not exist).",
            )

    def _take(self, corruption: Corruption) -> bool:
        with self._lock:
            left = self._faults.corruptions.get(corruption, 0)
            if left:
                self._faults.corruptions[corruption] = left - 1
            return left > 0

    # --- resources -----------------------------------------------------------------------

    def _ring(self, name: str) -> float:
        created = self._rings.get(name)
        if created is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"KeyRing {name} not found.")
        return created

    def _key(self, name: str) -> _Key:
        key = self._keys.get(name)
        if key is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"CryptoKey {name} not found.")
        return key

    def _version(self, name: str) -> _Version:
        version = self._versions.get(name)
        if version is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"CryptoKeyVersion {name} not found.")
        version.refresh(time.time())
        return version

    @staticmethod
    def _check_id(value: str, what: str) -> None:
        if not _ID.fullmatch(value):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{what} {value!r} must match the pattern [a-zA-Z0-9_-]{{1,63}}.",
            )

    @staticmethod
    def _ring_pb(name: str, created: float) -> Any:
        ring = resources.KeyRing.pb()(name=name)
        _now_pb(ring.create_time, created)
        return ring

    def _key_pb(self, key: _Key) -> Any:
        pb = resources.CryptoKey.pb()(
            name=key.name,
            purpose=_Purpose.ASYMMETRIC_SIGN,
            labels=key.labels,
        )
        pb.version_template.algorithm = getattr(_Algorithm, key.algorithm)
        pb.version_template.protection_level = key.protection_level
        _now_pb(pb.create_time, key.created)
        return pb

    @staticmethod
    def _version_pb(version: _Version) -> Any:
        pb = resources.CryptoKeyVersion.pb()(
            name=version.name,
            state=getattr(_State, version.state),
            protection_level=version.protection_level,
            algorithm=getattr(_Algorithm, version.algorithm),
        )
        _now_pb(pb.create_time, version.created)
        if version.state != "PENDING_GENERATION":
            _now_pb(pb.generate_time, version.ready_at)
        return pb

    def _create_key_ring(self, request: Any) -> Any:
        if not _LOCATION.fullmatch(request.parent):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid parent {request.parent!r}")
        self._check_id(request.key_ring_id, "key_ring_id")
        name = f"{request.parent}/keyRings/{request.key_ring_id}"
        with self._lock:
            if name in self._rings:
                raise _Abort(grpc.StatusCode.ALREADY_EXISTS, f"KeyRing {name} already exists.")
            self._rings[name] = time.time()
            return self._ring_pb(name, self._rings[name])

    def _get_key_ring(self, request: Any) -> Any:
        with self._lock:
            return self._ring_pb(request.name, self._ring(request.name))

    def _list_key_rings(self, request: Any) -> Any:
        with self._lock:
            rings = [
                self._ring_pb(n, t)
                for n, t in self._rings.items()
                if n.startswith(request.parent + "/keyRings/")
            ]
        return service.ListKeyRingsResponse.pb()(key_rings=rings, total_size=len(rings))

    def _create_crypto_key(self, request: Any) -> Any:
        self._check_id(request.crypto_key_id, "crypto_key_id")
        wanted = request.crypto_key
        if wanted.purpose != _Purpose.ASYMMETRIC_SIGN:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the fake KMS supports only purpose ASYMMETRIC_SIGN",
            )
        algorithm = _Algorithm(wanted.version_template.algorithm).name
        if algorithm not in _ALGORITHMS:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"algorithm {algorithm} is not supported by the fake KMS",
            )
        level = wanted.version_template.protection_level or resources.ProtectionLevel.SOFTWARE
        name = f"{request.parent}/cryptoKeys/{request.crypto_key_id}"
        with self._lock:
            self._ring(request.parent)
            if name in self._keys:
                raise _Abort(grpc.StatusCode.ALREADY_EXISTS, f"CryptoKey {name} already exists.")
            key = _Key(name, algorithm, int(level), dict(wanted.labels), time.time())
            self._keys[name] = key
        if not request.skip_initial_version_creation:
            self._add_version(key)
        with self._lock:
            return self._key_pb(key)

    def _get_crypto_key(self, request: Any) -> Any:
        with self._lock:
            return self._key_pb(self._key(request.name))

    def _list_crypto_keys(self, request: Any) -> Any:
        with self._lock:
            self._ring(request.parent)
            keys = [
                self._key_pb(k)
                for k in self._keys.values()
                if k.name.startswith(request.parent + "/")
            ]
        return service.ListCryptoKeysResponse.pb()(crypto_keys=keys, total_size=len(keys))

    def _add_version(self, key: _Key) -> _Version:
        private = _generate(key.algorithm)  # outside the lock: RSA-3072 takes a while
        pem = (
            private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        now = time.time()
        with self._lock:
            name = f"{key.name}/cryptoKeyVersions/{len(key.versions) + 1}"
            version = _Version(
                name=name,
                algorithm=key.algorithm,
                protection_level=key.protection_level,
                private=private,
                state="PENDING_GENERATION" if self.generation_delay > 0 else "ENABLED",
                created=now,
                ready_at=now + self.generation_delay,
                pem=pem,
            )
            key.versions.append(version)
            self._versions[name] = version
        return version

    def _create_version(self, request: Any) -> Any:
        with self._lock:
            key = self._key(request.parent)
        version = self._add_version(key)
        with self._lock:
            return self._version_pb(version)

    def _get_version(self, request: Any) -> Any:
        with self._lock:
            return self._version_pb(self._version(request.name))

    def _list_versions(self, request: Any) -> Any:
        with self._lock:
            key = self._key(request.parent)
            now = time.time()
            for v in key.versions:
                v.refresh(now)
            versions = [self._version_pb(v) for v in key.versions]
        return service.ListCryptoKeyVersionsResponse.pb()(
            crypto_key_versions=versions, total_size=len(versions)
        )

    def _update_version(self, request: Any) -> Any:
        wanted = request.crypto_key_version
        if list(request.update_mask.paths) != ["state"]:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the fake KMS updates only the state (update_mask.paths = ['state'])",
            )
        state = _State(wanted.state).name
        if state not in ("ENABLED", "DISABLED"):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"cannot set state to {state} with an update"
            )
        with self._lock:
            version = self._version(wanted.name)
            if version.state not in ("ENABLED", "DISABLED"):
                raise _Abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{version.name} is in state {version.state}, which cannot be updated.",
                )
            version.state = state
            return self._version_pb(version)

    def _usable(self, name: str) -> _Version:
        """An ENABLED version (lock held)."""
        version = self._version(name)
        if version.state != "ENABLED":
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{name} is not enabled, current state is: {version.state}.",
            )
        return version

    def _get_public_key(self, request: Any) -> Any:
        with self._lock:
            version = self._usable(request.name)
        pem = version.pem
        crc = _crc32c(pem.encode())
        if self._take(Corruption.PEM_CRC32C):
            crc ^= 1
        name = version.name
        if self._take(Corruption.WRONG_NAME):
            name += "0"
        return resources.PublicKey.pb()(
            pem=pem,
            algorithm=getattr(_Algorithm, version.algorithm),
            pem_crc32c={"value": crc},
            name=name,
            protection_level=version.protection_level,
        )

    def _asymmetric_sign(self, request: Any) -> Any:
        with self._lock:
            version = self._usable(request.name)
        has_data = bool(request.data) or request.HasField("data_crc32c")
        has_digest = request.HasField("digest")
        if has_data and has_digest:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, "Only one of data and digest may be supplied."
            )
        if version.algorithm == "EC_SIGN_ED25519" and has_digest:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Algorithm {version.algorithm} requires data, not a digest.",
            )
        digest = b""
        if has_digest:
            if request.digest.WhichOneof("digest") != "sha256" or len(request.digest.sha256) != 32:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Algorithm {version.algorithm} requires a SHA-256 digest of 32 bytes.",
                )
            digest = request.digest.sha256
            if request.HasField("digest_crc32c") and request.digest_crc32c.value != _crc32c(digest):
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "The checksum in field digest_crc32c did not match the data in field digest.",
                )
        elif request.HasField("data_crc32c") and request.data_crc32c.value != _crc32c(request.data):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "The checksum in field data_crc32c did not match the data in field data.",
            )
        signature = _sign(
            version.private, version.algorithm, None if has_digest else request.data, digest
        )
        if self._take(Corruption.SIGNATURE):
            signature = bytes([signature[0] ^ 0x01]) + signature[1:]
        crc = _crc32c(signature)
        if self._take(Corruption.SIGNATURE_CRC32C):
            crc ^= 1
        unverified = self._take(Corruption.UNVERIFIED)
        name = version.name
        if self._take(Corruption.WRONG_NAME):
            name += "0"
        return service.AsymmetricSignResponse.pb()(
            signature=signature,
            signature_crc32c={"value": crc},
            verified_digest_crc32c=request.HasField("digest_crc32c") and not unverified,
            verified_data_crc32c=request.HasField("data_crc32c") and not unverified,
            name=name,
            protection_level=version.protection_level,
        )

    # --- control over gRPC (for a fake in another process) -------------------------------

    def _control_handler(self) -> grpc.GenericRpcHandler:
        ops: Mapping[str, Callable[..., Any]] = {
            "fail_next": self.fail_next,
            "set_latency": self.set_latency,
            "corrupt_next": self.corrupt_next,
            "deny": self.deny,
            "allow": self.allow,
            "reset_faults": self.reset_faults,
            "call_counts": self.call_counts,
            "version_state": self.version_state,
            "version_names": self.version_names,
        }

        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                message = json.loads(request)
                result = ops[message["op"]](**message.get("kwargs", {}))
            except (KeyError, TypeError, ValueError) as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{type(e).__name__}: {e}")
            return json.dumps({"result": result}).encode()

        return grpc.method_handlers_generic_handler(
            CONTROL_SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(call)}
        )


class RemoteFakeKms:
    """Fault switches of a fake KMS running in another process (same names as on ``FakeKms``).

    Args:
        address: ``HOST:PORT`` the fake printed.
        timeout: seconds per control call.
    """

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.address = address
        self._timeout = timeout
        self._channel = grpc.insecure_channel(address)
        self._call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(
            f"/{CONTROL_SERVICE}/Call"
        )

    def close(self) -> None:
        """Close the control channel."""
        self._channel.close()

    def __enter__(self) -> RemoteFakeKms:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _op(self, op: str, **kwargs: Any) -> Any:
        reply = self._call(json.dumps({"op": op, "kwargs": kwargs}).encode(), timeout=self._timeout)
        return json.loads(reply)["result"]

    def fail_next(
        self,
        code: grpc.StatusCode | str,
        count: int = 1,
        *,
        message: str = "",
        method: str | None = None,
    ) -> None:
        """See ``FakeKms.fail_next``."""
        name = code.name if isinstance(code, grpc.StatusCode) else code
        self._op("fail_next", code=name, count=count, message=message, method=method)

    def set_latency(self, seconds: float, method: str | None = None) -> None:
        """See ``FakeKms.set_latency``."""
        self._op("set_latency", seconds=seconds, method=method)

    def corrupt_next(self, corruption: Corruption | str, count: int = 1) -> None:
        """See ``FakeKms.corrupt_next``."""
        self._op("corrupt_next", corruption=Corruption(corruption).value, count=count)

    def deny(self, permission: str) -> None:
        """See ``FakeKms.deny``."""
        self._op("deny", permission=permission)

    def allow(self, permission: str) -> None:
        """See ``FakeKms.allow``."""
        self._op("allow", permission=permission)

    def reset_faults(self) -> None:
        """See ``FakeKms.reset_faults``."""
        self._op("reset_faults")

    def call_counts(self) -> dict[str, int]:
        """See ``FakeKms.call_counts``."""
        return dict(self._op("call_counts"))

    def version_state(self, name: str) -> str:
        """See ``FakeKms.version_state``."""
        return str(self._op("version_state", name=name))


def main(argv: list[str] | None = None) -> NoReturn:
    """``python -m tuf_signer.testing.fake_kms``: serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m tuf_signer.testing.fake_kms",
        description="A fake Google Cloud KMS (gRPC, plaintext, loopback only) for tests.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="loopback address (default %(default)s)"
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--workers", type=int, default=32, help="serving threads")
    parser.add_argument(
        "--generation-delay", type=float, default=0.0, help="seconds new versions stay pending"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    args = parser.parse_args(argv)
    try:
        fake = FakeKms(
            args.host, args.port, workers=args.workers, generation_delay=args.generation_delay
        )
    except ValueError as e:
        parser.error(str(e))
    if args.latency:
        fake.set_latency(args.latency)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    address = fake.start()
    print(f"FAKE_KMS_ADDRESS={address}", flush=True)
    try:
        stop.wait()
    finally:
        fake.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
