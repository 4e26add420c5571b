"""HSM baselines, each in its own process: raw python-pkcs11 loops and securesystemslib's HSMSigner.

Modes (results as one JSON object on stdout):

- ``raw``: one session, one key, ``C_Sign`` in a loop: the most a single
  python-pkcs11 thread gets out of SoftHSM. Ed25519 signs the payload
  (CKM_EDDSA); ECDSA P-256 signs its SHA-256 (CKM_ECDSA; SoftHSM has no
  CKM_ECDSA_SHA256), as tuf-signer does. Payloads: ``small`` (512-byte bins),
  ``timestamp``, or ``bulk`` (PEP 458 bins, then snapshot and timestamp).
- ``inprocess``: what a repository does today. securesystemslib 1.6's
  ``HSMSigner`` (ECDSA only), built from its ``hsm:`` URI as
  ``Signer.from_priv_key_uri`` does, signs every bin and then snapshot and
  timestamp, one after another in this process. It opens a session and logs in
  on every sign; that is its design, not a bench artefact.

Payloads are built before the clock starts. python-pkcs11 is confined to this
process's main thread (docs/design.md §4: SoftHSM runs without locking).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from bench import _payloads

_ED25519 = encode_named_curve_parameters("1.3.101.112")
_P256 = encode_named_curve_parameters("secp256r1")
HSM_SIGNER_KEYID = 2  # HSMSigner's default key id (PIV slot 9c); CKA_ID b"\x02"
_OPEN_ATTEMPTS = 10  # processes logging in at once sometimes fail (docs/design.md §4)


def _open(module: str, label: str, pin: str) -> Any:
    lib = pkcs11.lib(module)
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            return lib.get_token(token_label=label).open(user_pin=pin, rw=True)
        except (pkcs11.exceptions.NoSuchToken, pkcs11.exceptions.GeneralError):
            if attempt == _OPEN_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _keypair(session: Any, algorithm: str, *, store: bool, key_id: bytes | None = None) -> Any:
    key_type, params = (
        (KeyType.EC_EDWARDS, _ED25519) if algorithm == "ed25519" else (KeyType.EC, _P256)
    )
    domain = session.create_domain_parameters(key_type, {Attribute.EC_PARAMS: params}, local=True)
    options: dict[str, Any] = {"store": store, "label": f"bench-{algorithm}"}
    if key_id is not None:
        options["id"] = key_id
    _pub, priv = domain.generate_keypair(
        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
        private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        **options,
    )
    return priv


def _payloads_for(kind: str, start: int, stop: int, n_bins: int) -> list[bytes]:
    exp = _payloads.expires()
    if kind == "small":
        return [_payloads.small_bin(i, 1, exp) for i in range(start, stop)]
    if kind == "timestamp":
        return [_payloads.timestamp(i + 1, 1, exp) for i in range(start, stop)]
    if kind == "bulk":
        return [payload for _, payload in _payloads.realistic_bins(n_bins, 2, exp, start, stop)]
    raise SystemExit(f"unknown payload kind {kind!r}")


def run_raw(args: argparse.Namespace, pin: str) -> dict[str, Any]:
    payloads = _payloads_for(args.payload, args.start, args.stop, args.bins)
    tail: list[bytes] = []
    if args.payload == "bulk" and args.with_tail:
        exp = _payloads.expires()
        tail = [_payloads.bulk_snapshot(2, args.bins, 2, exp), _payloads.timestamp(2, 2, exp)]
    ecdsa = args.algorithm == "ecdsa"
    mechanism = Mechanism.ECDSA if ecdsa else Mechanism.EDDSA
    with _open(args.module, args.label, pin) as session:
        key = _keypair(session, args.algorithm, store=False)
        key.sign(b"warm-up", mechanism=mechanism)
        times: list[int] = []
        deadline = time.monotonic() + args.duration if args.duration > 0 else float("inf")
        t0_unix, t0 = time.time(), time.perf_counter()
        count = 0
        for payload in [*payloads, *tail]:
            s = time.perf_counter_ns()
            message = hashlib.sha256(payload).digest() if ecdsa else payload
            key.sign(message, mechanism=mechanism)
            if args.per_sign:
                times.append(time.perf_counter_ns() - s)
            count += 1
            if count % 64 == 0 and time.monotonic() > deadline:
                break
        elapsed = time.perf_counter() - t0
    out: dict[str, Any] = {
        "count": count,
        "elapsed_s": elapsed,
        "rate": count / elapsed,
        "start_unix": t0_unix,
        "end_unix": t0_unix + elapsed,
        "cpu_s": time.process_time(),
    }
    if times:
        out["per_sign_us"] = {
            "p50": statistics.median(times) / 1000,
            "mean": statistics.fmean(times) / 1000,
        }
    return out


def run_inprocess(args: argparse.Namespace, pin: str) -> dict[str, Any]:
    from securesystemslib.signer import HSMSigner, Signer

    # The key HSMSigner expects: an EC P-256 token object with CKA_ID 2 (made by
    # the first run on this token; W4 runs this baseline once per round).
    with _open(args.module, args.label, pin) as session:
        key_id = bytes([HSM_SIGNER_KEYID])
        mine = {Attribute.ID: key_id, Attribute.CLASS: ObjectClass.PRIVATE_KEY}
        if not list(session.get_objects(mine)):
            _keypair(session, "ecdsa", store=True, key_id=key_id)
    os.environ["PYKCS11LIB"] = args.module

    def secrets_handler(_what: str) -> str:
        return pin

    uri, public_key = HSMSigner.import_(HSM_SIGNER_KEYID, args.label, secrets_handler)
    signer = Signer.from_priv_key_uri(uri, public_key, secrets_handler)
    exp = _payloads.expires()
    payloads = _payloads_for("bulk", 0, args.bins, args.bins)
    payloads += [_payloads.bulk_snapshot(2, args.bins, 2, exp), _payloads.timestamp(2, 2, exp)]
    t0_unix, t0 = time.time(), time.perf_counter()
    signatures = [signer.sign(p) for p in payloads]
    elapsed = time.perf_counter() - t0
    # Not timed: the signatures are real.
    public_key.verify_signature(signatures[0], payloads[0])
    public_key.verify_signature(signatures[-1], payloads[-1])
    return {
        "count": len(payloads),
        "elapsed_s": elapsed,
        "rate": len(payloads) / elapsed,
        "start_unix": t0_unix,
        "end_unix": t0_unix + elapsed,
        "cpu_s": time.process_time(),
        "uri": uri,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["raw", "inprocess"])
    parser.add_argument("--module", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--pin-file", required=True, type=Path)
    parser.add_argument("--algorithm", choices=["ed25519", "ecdsa"], default="ed25519")
    parser.add_argument("--payload", choices=["small", "timestamp", "bulk"], default="small")
    parser.add_argument("--start", type=int, default=0, help="first payload index")
    parser.add_argument("--stop", type=int, default=1000, help="payload index to stop before")
    parser.add_argument("--bins", type=int, default=1024, help="bins in the bulk workload")
    parser.add_argument("--with-tail", action="store_true", help="bulk: then snapshot, timestamp")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after seconds (0: no)")
    parser.add_argument("--per-sign", action="store_true", help="time each C_Sign")
    args = parser.parse_args()
    if "SOFTHSM2_CONF" not in os.environ:
        parser.error("SOFTHSM2_CONF must name the bench token's SoftHSM config")
    pin = args.pin_file.read_text().strip()
    result = run_raw(args, pin) if args.mode == "raw" else run_inprocess(args, pin)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
