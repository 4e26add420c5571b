"""Signed notes, checkpoints, cosignatures and tlog proofs against the C2SP specs and Go.

The spec examples serve as test vectors; Go's golang.org/x/mod/sumdb/note (Debian
package golang-golang-x-mod-dev) is the independent implementation, driven through
tests/audit/gocheck_note/main.go, which also holds a cosignature/v1 verifier and
signer written from c2sp.org/tlog-cosignature alone.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import build_go_checker, json_requests
from tuf_signer.audit._checkpoint import (
    EMPTY_ROOT,
    Checkpoint,
    TlogProof,
    open_checkpoint,
    parse_checkpoint,
    parse_tlog_proof,
    sign_checkpoint,
    verify_tlog_proof,
)
from tuf_signer.audit._note import (
    COSIGNATURE_V1,
    ED25519,
    MAX_SIGNATURES,
    UNICODE_SPACES,
    Note,
    NoteFormatError,
    NoteSignature,
    NoteSignatureError,
    Signer,
    VerifierKey,
    cosign_text,
    cosignature_message,
    parse_note,
    parse_verifier_key,
    sign_text,
    verify_note,
)
from tuf_signer.errors import SignatureMismatchError, TufSignerError

ORIGIN = "tuf-signer.example/audit"
ROOT = hashlib.sha256(b"a root").digest()


def _key(name: str, sig_type: int = ED25519, seed: int = 1) -> tuple[VerifierKey, Signer]:
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return VerifierKey(name, sig_type, public), private.sign


LOG, LOG_SIGN = _key(ORIGIN)
WITNESS, WITNESS_SIGN = _key("witness.example/w1", COSIGNATURE_V1, seed=2)
OTHER, OTHER_SIGN = _key("other.example/log", seed=3)
BODY = Checkpoint(ORIGIN, 7, ROOT).body()


def _signed(body: str = BODY, cosign_at: int | None = 1679315147) -> bytes:
    note = sign_checkpoint(parse_checkpoint(body), LOG, LOG_SIGN)
    if cosign_at is not None:
        note = note.with_signature(cosign_text(body, WITNESS, cosign_at, WITNESS_SIGN))
    return note.format()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _flip(digit: str) -> str:
    """The base64 digit that differs from ``digit`` only in its lowest (padding) bit."""
    return _ALPHABET[_ALPHABET.index(digit) ^ 1]


# --- spec and Go documentation vectors -----------------------------------------------

# c2sp.org/signed-note "Example".
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n"
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYj"
    "OBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
).encode()
# golang.org/x/mod/sumdb/note package documentation (the seed is in its PRIVATE+KEY text).
GO_DOC_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
GO_DOC_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_DOC_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_DOC_LINE = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
    "dngotpRZb6KE6RyyBwJnAM=\n"
)


def test_spec_example_note_verifies_and_round_trips() -> None:
    key = parse_verifier_key(SPEC_VKEY)
    assert key.text() == SPEC_VKEY
    note = parse_note(SPEC_NOTE)
    assert [v.key for v in verify_note(note, [key])] == [key]
    assert note.format() == SPEC_NOTE
    tampered = SPEC_NOTE.replace(b"example message", b"example massage")
    with pytest.raises(NoteSignatureError, match=r"'example.com/foo'\+530d903a does not verify"):
        verify_note(parse_note(tampered), [key])


def test_go_documentation_key_and_signature() -> None:
    private = Ed25519PrivateKey.from_private_bytes(GO_DOC_SEED)
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key = VerifierKey("PeterNeumann", ED25519, public)
    assert key.text() == GO_DOC_VKEY
    assert (
        sign_text(GO_DOC_TEXT, key, private.sign).line() == GO_DOC_LINE
    )  # Ed25519 is deterministic


def test_cosignature_spec_example() -> None:
    # tlog-cosignature "Ed25519 signed message": the message for the example checkpoint.
    body = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    assert cosignature_message(body, 1679315147) == (
        b"cosignature/v1\ntime 1679315147\n" + body.encode()
    )
    # Its example cosignature line carries that timestamp after the key ID.
    line = (
        "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dl"
        "rDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
    )
    note = parse_note((body + "\n" + line).encode())
    (signature,) = note.signatures
    assert signature.key_id == 0x8D66CF3F
    assert len(signature.signature) == 72
    assert int.from_bytes(signature.signature[:8], "big") == 1679315147
    assert parse_checkpoint(note.text).size == 20852163


@pytest.mark.parametrize("sig_type", [ED25519, COSIGNATURE_V1], ids=["ed25519", "cosignature"])
def test_key_id_is_the_spec_formula(sig_type: int) -> None:
    key, _ = _key("n.example/é", sig_type)
    digest = hashlib.sha256("n.example/é".encode() + b"\x0a" + bytes([sig_type]) + key.public_key)
    assert key.key_id == int.from_bytes(digest.digest()[:4], "big")
    assert parse_verifier_key(key.text()) == key


# --- verifier keys ---------------------------------------------------------------------

_PUB = LOG.public_key


def _vkey(name: str, sig_type: int = ED25519, key: bytes = _PUB, hex_id: str | None = None) -> str:
    material = bytes([sig_type]) + key
    digest = hashlib.sha256(name.encode() + b"\n" + material).hexdigest()[:8]
    return f"{name}+{hex_id or digest}+{_b64(material)}"


# A name whose key ID has a hex letter, so that its uppercase spelling differs.
_LETTERED = next(n for n in "abcdefgh" if not _vkey(n).split("+")[1].isdigit())


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "not name\\+id\\+key"),
        ("a+b", "not name\\+id\\+key"),
        (_vkey("a") + "+x", "base64"),
        (_vkey("a", hex_id="0000000"), "8 lowercase hex"),
        (_vkey("a").replace("+", "+ ", 1), "8 lowercase hex"),
        (_vkey(_LETTERED, hex_id=_vkey(_LETTERED).split("+")[1].upper()), "8 lowercase hex"),
        (_vkey("a", hex_id="00000000"), "does not match"),
        (_vkey("a")[:-1] + "!", "not base64"),
        ("a+00000000+", "empty"),
        (_vkey("a", key=_PUB[:31]), "31 bytes"),
        (_vkey("a", key=_PUB + b"\0"), "33 bytes"),
        (_vkey("a", sig_type=0x02), "unsupported signature type 0x02"),
        (_vkey("a", sig_type=0x06), "unsupported signature type 0x06"),
        (_vkey(""), "empty"),
        (_vkey("a b"), "space"),
        (_vkey("a\u00a0b"), "space"),
        (_vkey("a\u3000b"), "space"),
        (_vkey("a\x01b"), "character"),
    ],
    ids=[
        "empty",
        "two-parts",
        "four-parts",
        "short-id",
        "space-in-id",
        "uppercase-id",
        "wrong-id",
        "bad-base64",
        "empty-material",
        "short-key",
        "long-key",
        "ecdsa-type",
        "mldsa-type",
        "empty-name",
        "space-name",
        "nbsp-name",
        "ideographic-space-name",
        "control-name",
    ],
)
def test_hostile_verifier_keys(text: str, match: str) -> None:
    with pytest.raises(NoteFormatError, match=match):
        parse_verifier_key(text)


# --- note syntax ---------------------------------------------------------------------

GOOD = _signed()

LOG_LINE = sign_text(BODY, LOG, LOG_SIGN).line()

HOSTILE_NOTES: list[tuple[str, bytes, str]] = [
    ("no-separator", BODY.encode() + LOG_LINE.encode(), "no blank line"),
    ("no-signature", BODY.encode() + b"\n", "does not end with a complete"),
    ("no-final-newline", GOOD[:-1], "does not end with a complete"),
    ("blank-after-sigs", GOOD + b"\n", "complete"),
    ("hyphen", (BODY + "\n" + LOG_LINE.replace("\u2014", "-")).encode(), "em dash"),
    ("en-dash", (BODY + "\n" + LOG_LINE.replace("\u2014", "\u2013")).encode(), "em dash"),
    ("no-space", (BODY + "\n" + LOG_LINE.replace("\u2014 ", "\u2014")).encode(), "em dash"),
    ("name-only", (BODY + "\n\u2014 " + ORIGIN + "\n").encode(), "no signature"),
    ("empty-name", (BODY + "\n" + LOG_LINE.replace(ORIGIN, "")).encode(), "empty"),
    ("plus-name", (BODY + "\n" + LOG_LINE.replace(ORIGIN, "a+b")).encode(), "space or"),
    ("nbsp-name", (BODY + "\n" + LOG_LINE.replace(ORIGIN, "a\u00a0b")).encode(), "space or"),
    ("two-spaces", (BODY + "\n" + LOG_LINE.replace(" ", "  ", 2)).encode(), "empty"),
    (
        "non-canonical-base64",
        (BODY + "\n" + LOG_LINE[:-3] + _flip(LOG_LINE[-3]) + "=\n").encode(),
        "canonical",
    ),
    ("trailing-space", (BODY + "\n" + LOG_LINE[:-1] + " \n").encode(), "base64"),
    ("bad-base64", (BODY + "\n" + LOG_LINE.replace("=", "!")).encode(), "not base64"),
    ("empty-base64", (BODY + "\n\u2014 " + ORIGIN + " \n").encode(), "shorter than 5"),
    ("4-bytes", (BODY + "\n\u2014 a " + _b64(b"abcd") + "\n").encode(), "shorter than 5"),
    ("tab", GOOD.replace(b"\n7\n", b"\n7\t\n"), "character '\\\\t'"),
    ("cr", GOOD.replace(b"\n", b"\r\n"), "character '\\\\r'"),
    ("nul", GOOD.replace(b"7", b"7\0"), "character '\\\\x00'"),
    ("esc", b"\x1b" + GOOD, "character '\\\\x1b'"),
    ("invalid-utf8", GOOD.replace(b"7", b"\xff"), "UTF-8"),
    ("overlong-utf8", GOOD.replace(b"7", b"\xc0\xb7"), "UTF-8"),
    ("surrogate-utf8", GOOD.replace(b"7", b"\xed\xa0\x80"), "UTF-8"),
    ("too-many", GOOD + LOG_LINE.encode() * MAX_SIGNATURES, "more than 100 signature lines"),
    ("too-large", b"a" * 1_000_001 + b"\n\n" + LOG_LINE.encode(), "larger than"),
]


@pytest.mark.parametrize(
    ("message", "match"), [c[1:] for c in HOSTILE_NOTES], ids=[c[0] for c in HOSTILE_NOTES]
)
def test_hostile_notes_are_malformed(message: bytes, match: str) -> None:
    with pytest.raises(NoteFormatError, match=match):
        parse_note(message)


GOOD_NOTES: list[tuple[str, bytes, str]] = [
    ("checkpoint", GOOD, BODY),
    ("empty-lines-in-text", b"a\n\nb\n\n" + LOG_LINE.encode(), "a\n\nb\n"),
    ("text-ends-blank", b"a\n\n\n" + LOG_LINE.encode(), "a\n\n"),
    ("just-newline", b"\n\n" + LOG_LINE.encode(), "\n"),
    ("del-and-unicode", "\x7f é \u2014 x\n\n".encode() + LOG_LINE.encode(), "\x7f é \u2014 x\n"),
    ("max-signatures", GOOD + LOG_LINE.encode() * (MAX_SIGNATURES - 2), BODY),
]


@pytest.mark.parametrize(
    ("message", "text"), [c[1:] for c in GOOD_NOTES], ids=[c[0] for c in GOOD_NOTES]
)
def test_good_notes_parse_and_round_trip(message: bytes, text: str) -> None:
    note = parse_note(message)
    assert note.text == text
    assert note.format() == message


# --- note verification -----------------------------------------------------------------


def _note(*lines: NoteSignature, text: str = BODY) -> Note:
    return Note(text, lines)


_LOG_SIG = sign_text(BODY, LOG, LOG_SIGN)
_BAD_LOG_SIG = NoteSignature(LOG.name, LOG.key_id, bytes(64))
_OTHER_SIG = sign_text(BODY, OTHER, OTHER_SIGN)
_COSIG = cosign_text(BODY, WITNESS, 5, WITNESS_SIGN)


@pytest.mark.parametrize(
    ("signatures", "verifiers", "verified"),
    [
        ((_LOG_SIG,), (LOG,), (LOG,)),
        ((_OTHER_SIG, _LOG_SIG), (LOG,), (LOG,)),
        ((_LOG_SIG, _COSIG), (LOG, WITNESS), (LOG, WITNESS)),
        ((_LOG_SIG, _LOG_SIG), (LOG,), (LOG, LOG)),
        ((_LOG_SIG, NoteSignature(LOG.name, LOG.key_id ^ 1, bytes(64))), (LOG,), (LOG,)),
        ((_LOG_SIG, NoteSignature("x.example", LOG.key_id, bytes(64))), (LOG,), (LOG,)),
        (
            (_LOG_SIG, NoteSignature(WITNESS.name, WITNESS.key_id ^ 1, bytes(72))),
            (LOG, WITNESS),
            (LOG,),
        ),
    ],
    ids=[
        "one",
        "unknown-key-ignored",
        "log-and-cosigner",
        "duplicate-line",
        "same-name-other-id-ignored",
        "same-id-other-name-ignored",
        "unknown-cosigner-ignored",
    ],
)
def test_verification_accepts(
    signatures: tuple[NoteSignature, ...],
    verifiers: tuple[VerifierKey, ...],
    verified: tuple[VerifierKey, ...],
) -> None:
    assert tuple(v.key for v in verify_note(_note(*signatures), verifiers)) == verified


@pytest.mark.parametrize(
    ("signatures", "verifiers", "match"),
    [
        ((_OTHER_SIG,), (LOG,), "no signature by a known key"),
        ((_LOG_SIG,), (), "no signature by a known key"),
        ((_BAD_LOG_SIG, _OTHER_SIG), (LOG, OTHER), "does not verify"),
        ((_LOG_SIG, _BAD_LOG_SIG), (LOG,), "does not verify"),
        ((NoteSignature(LOG.name, LOG.key_id, bytes(63)),), (LOG,), "63 bytes, not 64"),
        ((NoteSignature(LOG.name, LOG.key_id, _LOG_SIG.signature + b"\0"),), (LOG,), "65 bytes"),
        (
            (_LOG_SIG, NoteSignature(WITNESS.name, WITNESS.key_id, _COSIG.signature[:-1])),
            (LOG, WITNESS),
            "71 bytes, not 72",
        ),
        (
            (
                _LOG_SIG,
                NoteSignature(
                    WITNESS.name,
                    WITNESS.key_id,
                    (5).to_bytes(8, "big") + WITNESS_SIGN(BODY.encode()),
                ),
            ),
            (LOG, WITNESS),
            "does not verify",
        ),
        (
            (
                _LOG_SIG,
                NoteSignature(
                    WITNESS.name, WITNESS.key_id, (6).to_bytes(8, "big") + _COSIG.signature[8:]
                ),
            ),
            (LOG, WITNESS),
            "does not verify",
        ),
        (
            (
                _LOG_SIG,
                NoteSignature(WITNESS.name, WITNESS.key_id, b"\xff" * 8 + _COSIG.signature[8:]),
            ),
            (LOG, WITNESS),
            "above 2\\^63 - 1",
        ),
    ],
    ids=[
        "only-unknown",
        "no-verifiers",
        "known-bad-first",
        "duplicate-key-second-bad",
        "short-signature",
        "long-signature",
        "short-cosignature",
        "cosignature-without-timestamp-in-message",
        "cosignature-timestamp-changed",
        "cosignature-timestamp-too-large",
    ],
)
def test_verification_rejects(
    signatures: tuple[NoteSignature, ...], verifiers: tuple[VerifierKey, ...], match: str
) -> None:
    with pytest.raises(NoteSignatureError, match=match):
        verify_note(_note(*signatures), verifiers)


def test_a_note_holds_at_most_100_signatures() -> None:
    note = Note(BODY, (_LOG_SIG,) * MAX_SIGNATURES)
    with pytest.raises(NoteFormatError, match=r"more than 100 signatures$"):
        note.with_signature(_COSIG)


def test_ambiguous_verifiers_are_refused() -> None:
    twin = VerifierKey(LOG.name, ED25519, OTHER.public_key)
    object.__setattr__(twin, "key_id", LOG.key_id)  # a forced key-ID collision
    with pytest.raises(NoteFormatError, match="two verifier keys"):
        verify_note(_note(_LOG_SIG), [LOG, twin])


def test_cosignature_is_timestamp_then_signature_over_the_spec_message() -> None:
    # Independent of cosign_text: sign the spec's message by hand.
    private = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
    message = b"cosignature/v1\ntime 5\n" + BODY.encode()
    assert _COSIG.signature == (5).to_bytes(8, "big") + private.sign(message)
    assert _COSIG.key_id == int.from_bytes(
        hashlib.sha256(WITNESS.name.encode() + b"\n\x04" + WITNESS.public_key).digest()[:4], "big"
    )
    (verified,) = verify_note(_note(_COSIG), [WITNESS])
    assert verified.timestamp == 5


# --- signing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: sign_text(BODY, WITNESS, WITNESS_SIGN), NoteFormatError, "not an Ed25519"),
        (lambda: cosign_text(BODY, LOG, 1, LOG_SIGN), NoteFormatError, "not a cosignature"),
        (lambda: sign_text("no newline", LOG, LOG_SIGN), NoteFormatError, "newline"),
        (lambda: sign_text("a\tb\n", LOG, LOG_SIGN), NoteFormatError, "character"),
        (lambda: cosign_text(BODY, WITNESS, -1, WITNESS_SIGN), NoteFormatError, "out of range"),
        (lambda: cosign_text(BODY, WITNESS, 2**63, WITNESS_SIGN), NoteFormatError, "out of range"),
        (lambda: sign_text(BODY, LOG, OTHER_SIGN), SignatureMismatchError, "bad signature"),
        (lambda: sign_text(BODY, LOG, lambda m: b""), SignatureMismatchError, "bad signature"),
        (lambda: cosign_text(BODY, WITNESS, 1, LOG_SIGN), SignatureMismatchError, "bad"),
        (
            lambda: sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), OTHER, OTHER_SIGN),
            NoteFormatError,
            "not named after the origin",
        ),
    ],
    ids=[
        "sign-with-cosigner-key",
        "cosign-with-log-key",
        "text-without-newline",
        "text-with-tab",
        "negative-time",
        "time-too-large",
        "signer-uses-another-key",
        "signer-returns-nothing",
        "cosigner-uses-another-key",
        "log-key-not-origin",
    ],
)
def test_signing_refuses(call: Any, error: type[TufSignerError], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


# --- checkpoints -------------------------------------------------------------------------

_R = _b64(ROOT)
_URLSAFE = base64.urlsafe_b64encode(b"\xff" * 32).decode()

HOSTILE_CHECKPOINTS = [
    ("two-lines", f"{ORIGIN}\n7\n", "fewer than 3"),
    ("no-newline", f"{ORIGIN}\n7\n{_R}", "newline"),
    ("empty-origin", f"\n7\n{_R}\n", "origin is empty"),
    ("empty-extension", f"{ORIGIN}\n7\n{_R}\n\n", "extension line is empty"),
    ("empty-size", f"{ORIGIN}\n\n{_R}\n", "decimal"),
    ("leading-zero", f"{ORIGIN}\n07\n{_R}\n", "decimal"),
    ("plus-sign", f"{ORIGIN}\n+7\n{_R}\n", "decimal"),
    ("minus-sign", f"{ORIGIN}\n-7\n{_R}\n", "decimal"),
    ("space", f"{ORIGIN}\n 7\n{_R}\n", "decimal"),
    ("underscore", f"{ORIGIN}\n1_0\n{_R}\n", "decimal"),
    ("arabic-digit", f"{ORIGIN}\n\u0667\n{_R}\n", "decimal"),
    ("hex", f"{ORIGIN}\n0x7\n{_R}\n", "decimal"),
    ("too-big", f"{ORIGIN}\n{2**63}\n{_R}\n", "above"),
    ("huge", f"{ORIGIN}\n{'9' * 400}\n{_R}\n", "decimal"),
    ("short-root", f"{ORIGIN}\n7\n{_b64(ROOT[:31])}\n", "31 bytes"),
    ("long-root", f"{ORIGIN}\n7\n{_b64(ROOT + b'x')}\n", "33 bytes"),
    ("root-non-canonical", f"{ORIGIN}\n7\n{_R[:-2]}{_flip(_R[-2])}=\n", "canonical"),
    ("root-not-base64", f"{ORIGIN}\n7\n{_R[:-1]}\n", "not base64"),
    ("root-urlsafe", f"{ORIGIN}\n7\n{_URLSAFE}\n", "base64"),
    ("empty-tree-wrong-root", f"{ORIGIN}\n0\n{_R}\n", "empty tree"),
]


@pytest.mark.parametrize(
    ("text", "match"), [c[1:] for c in HOSTILE_CHECKPOINTS], ids=[c[0] for c in HOSTILE_CHECKPOINTS]
)
def test_hostile_checkpoints(text: str, match: str) -> None:
    with pytest.raises(NoteFormatError, match=match):
        parse_checkpoint(text)


@pytest.mark.parametrize(
    ("text", "checkpoint"),
    [
        (
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            Checkpoint(
                "example.com/behind-the-sofa",
                20852163,
                base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="),
            ),
        ),
        (f"{ORIGIN}\n0\n{_b64(EMPTY_ROOT)}\n", Checkpoint(ORIGIN, 0, EMPTY_ROOT)),
        (f"{ORIGIN}\n{2**63 - 1}\n{_R}\n", Checkpoint(ORIGIN, 2**63 - 1, ROOT)),
        (f"{ORIGIN}\n7\n{_R}\nx\ny z\n", Checkpoint(ORIGIN, 7, ROOT, ("x", "y z"))),
        (f"any origin+ é\n7\n{_R}\n", Checkpoint("any origin+ é", 7, ROOT)),
    ],
    ids=["spec-example", "empty-tree", "largest", "extensions", "origin-not-a-url"],
)
def test_good_checkpoints(text: str, checkpoint: Checkpoint) -> None:
    assert parse_checkpoint(text) == checkpoint
    assert checkpoint.body() == text


def test_open_checkpoint_with_cosignature() -> None:
    signed = open_checkpoint(GOOD, origin=ORIGIN, log_key=LOG, cosigners=[WITNESS], quorum=1)
    assert signed.checkpoint == Checkpoint(ORIGIN, 7, ROOT)
    assert [(c.key, c.timestamp) for c in signed.cosignatures] == [(WITNESS, 1679315147)]
    assert signed.note.format() == GOOD


@pytest.mark.parametrize(
    ("message", "kwargs", "error", "match"),
    [
        (GOOD, {"origin": "x.example"}, NoteFormatError, "is not 'x.example'"),
        (GOOD, {"log_key": OTHER}, NoteSignatureError, "not signed by other.example/log"),
        (GOOD, {"log_key": WITNESS}, NoteFormatError, "not an Ed25519"),
        (GOOD, {"cosigners": [LOG]}, NoteFormatError, "also listed as a cosigner"),
        (GOOD, {"quorum": 2}, NoteSignatureError, "1 valid cosignatures of the 2"),
        (GOOD, {"cosigners": [], "quorum": 1}, NoteSignatureError, "0 valid cosignatures"),
        (
            Note(BODY, (_COSIG,)).format(),
            {},
            NoteSignatureError,
            "not signed by tuf-signer.example/audit",
        ),
        (
            Note(
                BODY, (_LOG_SIG, _COSIG, NoteSignature(WITNESS.name, WITNESS.key_id, bytes(72)))
            ).format(),
            {},
            NoteSignatureError,
            "witness.example/w1.* does not verify",
        ),
        (Note(f"{ORIGIN}\n7\n", (_LOG_SIG,)).format(), {}, NoteFormatError, "fewer than 3"),
    ],
    ids=[
        "wrong-origin",
        "other-log-key",
        "cosigner-key-as-log-key",
        "log-key-as-cosigner",
        "quorum-not-met",
        "quorum-with-no-cosigners",
        "only-cosigned",
        "bad-cosignature",
        "not-a-checkpoint",
    ],
)
def test_open_checkpoint_refuses(
    message: bytes, kwargs: dict[str, Any], error: type[TufSignerError], match: str
) -> None:
    arguments: dict[str, Any] = {
        "origin": ORIGIN,
        "log_key": LOG,
        "cosigners": [WITNESS],
        **kwargs,
    }
    with pytest.raises(error, match=match):
        open_checkpoint(message, **arguments)


# --- tlog proofs ---------------------------------------------------------------------------

H1, H2 = hashlib.sha256(b"1").digest(), hashlib.sha256(b"2").digest()
PROOF_TEXT = (
    f"c2sp.org/tlog-proof@v1\nextra {_b64(b'hello')}\nindex 3\n{_b64(H1)}\n{_b64(H2)}\n\n".encode()
    + GOOD
)


def test_proof_layout_is_the_spec_layout() -> None:
    proof = TlogProof(index=3, path=(H1, H2), checkpoint=GOOD, extra=b"hello")
    assert proof.format() == PROOF_TEXT
    assert parse_tlog_proof(PROOF_TEXT) == proof
    bare = TlogProof(index=0, path=(), checkpoint=GOOD)
    assert bare.format() == b"c2sp.org/tlog-proof@v1\nindex 0\n\n" + GOOD
    assert parse_tlog_proof(bare.format()) == bare


def _swap(old: bytes, new: bytes) -> bytes:
    assert old in PROOF_TEXT
    return PROOF_TEXT.replace(old, new, 1)


HOSTILE_PROOFS = [
    ("empty", b"", "no empty line"),
    ("wrong-header", _swap(b"@v1", b"@v2"), "does not start with"),
    ("header-trailing-space", _swap(b"@v1\n", b"@v1 \n"), "does not start with"),
    ("no-index", _swap(b"index 3\n", b""), "no index line"),
    ("index-first", _swap(b"extra aGVsbG8=\nindex 3", b"index 3\nextra aGVsbG8="), "base64"),
    ("empty-extra", _swap(b"extra aGVsbG8=", b"extra "), "empty"),
    ("extra-not-base64", _swap(b"extra aGVsbG8=", b"extra aGVsbG8"), "base64"),
    ("index-leading-zero", _swap(b"index 3", b"index 03"), "decimal"),
    ("index-negative", _swap(b"index 3", b"index -3"), "decimal"),
    ("index-two-spaces", _swap(b"index 3", b"index  3"), "decimal"),
    ("index-at-size", _swap(b"index 3", b"index 7"), "not below the tree size 7"),
    ("hash-short", _swap(_b64(H1).encode(), _b64(H1[:31]).encode()), "32 bytes"),
    ("hash-not-base64", _swap(_b64(H1).encode(), b"not base64!"), "base64"),
    (
        "too-many-hashes",
        _swap(b"index 3\n", b"index 3\n" + (_b64(H1) + "\n").encode() * 62),
        "more than 63",
    ),
    ("non-ascii", _swap(b"index 3", "index \u0663".encode()), "ASCII"),
    ("crlf", _swap(b"index 3\n", b"index 3\r\n"), "decimal"),
    (
        "checkpoint-unsigned",
        PROOF_TEXT[: PROOF_TEXT.index(b"\n\n") + 2] + BODY.encode(),
        "no blank line",
    ),
    (
        "checkpoint-garbage",
        PROOF_TEXT[: PROOF_TEXT.index(b"\n\n") + 2] + b"x\n\n" + LOG_LINE.encode(),
        "fewer than 3",
    ),
]


@pytest.mark.parametrize(
    ("text", "match"), [c[1:] for c in HOSTILE_PROOFS], ids=[c[0] for c in HOSTILE_PROOFS]
)
def test_hostile_proofs(text: bytes, match: str) -> None:
    with pytest.raises(NoteFormatError, match=match):
        parse_tlog_proof(text)


class _Recorder:
    def __init__(self, error: TufSignerError | None = None) -> None:
        self.calls: list[tuple[int, int, bytes, tuple[bytes, ...], bytes]] = []
        self.error = error

    def __call__(
        self, index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes, /
    ) -> None:
        self.calls.append((index, size, leaf, tuple(path), root))
        if self.error is not None:
            raise self.error


def test_verify_tlog_proof_checks_signatures_then_inclusion() -> None:
    proof = parse_tlog_proof(PROOF_TEXT)
    leaf = hashlib.sha256(b"\0record").digest()
    recorder = _Recorder()
    signed = verify_tlog_proof(
        proof,
        leaf_hash=leaf,
        origin=ORIGIN,
        log_key=LOG,
        verify_inclusion=recorder,
        cosigners=[WITNESS],
        quorum=1,
    )
    assert recorder.calls == [(3, 7, leaf, (H1, H2), ROOT)]
    assert signed.cosignatures[0].key == WITNESS

    failing = _Recorder(TufSignerError("inclusion proof does not lead to the root", "DATA_LOSS"))
    with pytest.raises(TufSignerError, match="does not lead to the root"):
        verify_tlog_proof(
            proof, leaf_hash=leaf, origin=ORIGIN, log_key=LOG, verify_inclusion=failing
        )
    # A bad signature is found before the Merkle check runs.
    unsigned = _Recorder()
    with pytest.raises(NoteSignatureError, match="not signed by"):
        verify_tlog_proof(
            proof, leaf_hash=leaf, origin=ORIGIN, log_key=OTHER, verify_inclusion=unsigned
        )
    assert unsigned.calls == []


# --- properties ------------------------------------------------------------------------------

_name_chars = st.characters(
    blacklist_categories=("Cs", "Cc"), blacklist_characters=["+", *UNICODE_SPACES]
)
names = st.text(_name_chars, min_size=1, max_size=20)
_text_chars = st.characters(
    blacklist_categories=["Cs"], blacklist_characters=[chr(c) for c in range(0x20) if c != 0x0A]
)
lines = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(text=st.text(_text_chars, max_size=200), name=names, count=st.integers(1, 4))
def test_notes_round_trip(text: str, name: str, count: int) -> None:
    key, sign = _key(name)
    note = Note(text + "\n", (sign_text(text + "\n", key, sign),) * count)
    parsed = parse_note(note.format())
    assert parsed == note
    assert [v.key for v in verify_note(parsed, [key])] == [key] * count
    assert parse_verifier_key(key.text()) == key


@settings(max_examples=200, deadline=None)
@given(
    origin=lines,
    size=st.integers(1, 2**63 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(lines, max_size=3),
    timestamp=st.integers(0, 2**63 - 1),
)
def test_checkpoints_and_cosignatures_round_trip(
    origin: str, size: int, root: bytes, extensions: list[str], timestamp: int
) -> None:
    checkpoint = Checkpoint(origin, size, root, tuple(extensions))
    assert parse_checkpoint(checkpoint.body()) == checkpoint
    note = Note(
        checkpoint.body(), (cosign_text(checkpoint.body(), WITNESS, timestamp, WITNESS_SIGN),)
    )
    (verified,) = verify_note(parse_note(note.format()), [WITNESS])
    assert verified.timestamp == timestamp


@settings(max_examples=100, deadline=None)
@given(
    index=st.integers(0, 6),
    path=st.lists(st.binary(min_size=32, max_size=32), max_size=63),
    extra=st.none() | st.binary(min_size=1, max_size=64),
)
def test_proofs_round_trip(index: int, path: list[bytes], extra: bytes | None) -> None:
    proof = TlogProof(index, tuple(path), GOOD, extra)
    assert parse_tlog_proof(proof.format()) == proof


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_single_byte_change_is_refused(data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(GOOD) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != GOOD[position]))
    changed = GOOD[:position] + bytes([value]) + GOOD[position + 1 :]
    with pytest.raises((NoteFormatError, NoteSignatureError)):
        open_checkpoint(changed, origin=ORIGIN, log_key=LOG, cosigners=[WITNESS], quorum=1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_parsers_raise_only_their_error(data: bytes) -> None:
    for parse in (
        parse_note,
        parse_tlog_proof,
        lambda d: parse_checkpoint(d.decode("utf-8", "replace")),
    ):
        with contextlib.suppress(NoteFormatError):
            parse(data)


# --- Go's golang.org/x/mod/sumdb/note -------------------------------------------------------

GO_CHECK = Path(__file__).parent / "gocheck_note"


@pytest.fixture(scope="module")
def go_note(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Run requests through the Go checker (built once per module)."""
    binary = build_go_checker(
        GO_CHECK,
        tmp_path_factory.mktemp("gocheck_note"),
        "golang.org/x/mod/sumdb/note",
        "Go's x/mod note package is the reference",
    )
    return json_requests(binary)


def _cosigner(key: VerifierKey, **more: Any) -> dict[str, Any]:
    return {"name": key.name, "pub": _b64(key.public_key), **more}


def test_go_opens_our_checkpoint_and_cosignature(go_note: Any) -> None:
    (answer,) = go_note(
        {"op": "open", "note": _b64(GOOD), "vkeys": [LOG.text()], "cosigners": [_cosigner(WITNESS)]}
    )
    assert answer == {
        "text": BODY,
        "sigs": [
            {"name": LOG.name, "hash": LOG.key_id},
            {"name": WITNESS.name, "hash": WITNESS.key_id},
        ],
    }
    # And Go refuses it when the cosignature is altered (its verifier really checks).
    bad = Note(BODY, (_LOG_SIG, NoteSignature(WITNESS.name, WITNESS.key_id, bytes(72)))).format()
    (answer,) = go_note(
        {"op": "open", "note": _b64(bad), "vkeys": [LOG.text()], "cosigners": [_cosigner(WITNESS)]}
    )
    assert answer["error"].startswith("invalid signature for key witness.example/w1")


def test_we_open_notes_signed_by_go(go_note: Any) -> None:
    seed = bytes(range(32))
    generated, cosigned = go_note(
        {"op": "genkey", "name": ORIGIN},
        {
            "op": "sign",
            "text": BODY,
            "skeys": [GO_DOC_SKEY],
            "cosigners": [{"name": "w.example", "seed": _b64(seed), "time": 2**63 - 1}],
        },
    )
    (signed,) = go_note({"op": "sign", "text": BODY, "skeys": [generated["skey"]]})
    key = parse_verifier_key(generated["vkey"])
    assert key.text() == generated["vkey"]
    (verified,) = verify_note(parse_note(signed["note"].encode()), [key])
    assert verified.key == key
    assert open_checkpoint(signed["note"].encode(), origin=ORIGIN, log_key=key).checkpoint.size == 7

    private = Ed25519PrivateKey.from_private_bytes(seed)
    witness = VerifierKey(
        "w.example",
        COSIGNATURE_V1,
        private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
    )
    note = parse_note(cosigned["note"].encode())
    verified_all = verify_note(note, [parse_verifier_key(GO_DOC_VKEY), witness])
    assert [(v.key.name, v.timestamp) for v in verified_all] == [
        ("PeterNeumann", None),
        ("w.example", 2**63 - 1),
    ]


GO_DOC_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"


@pytest.mark.parametrize(
    "name",
    ["a", ORIGIN, "é.example/ü", "x" * 300, "\u2014", "a=b/c?d#e"],
    ids=["one-letter", "origin", "non-ascii", "long", "em-dash", "url-punctuation"],
)
def test_go_derives_the_same_vkey(go_note: Any, name: str) -> None:
    key = VerifierKey(name, ED25519, LOG.public_key)
    made, parsed = go_note(
        {"op": "vkey", "name": name, "pub": _b64(LOG.public_key)},
        {"op": "newverifier", "vkeys": [key.text()]},
    )
    assert made == {"vkey": key.text()}
    assert parsed == {"sigs": [{"name": name, "hash": key.key_id}]}


def test_unicode_spaces_are_gos(go_note: Any) -> None:
    (answer,) = go_note({"op": "spaces"})
    assert frozenset(map(chr, answer["spaces"])) == UNICODE_SPACES


# Where our reading is deliberately stricter than Go's, Go accepts; everywhere else
# Go refuses what we refuse.
_STRICTER_THAN_GO = {"non-canonical-base64"}


@pytest.mark.parametrize(
    ("case", "message"), [(c[0], c[1]) for c in HOSTILE_NOTES], ids=[c[0] for c in HOSTILE_NOTES]
)
def test_go_refuses_our_hostile_notes(go_note: Any, case: str, message: bytes) -> None:
    (answer,) = go_note({"op": "open", "note": _b64(message), "vkeys": [LOG.text()]})
    assert ("error" in answer) == (case not in _STRICTER_THAN_GO), answer


def test_go_reads_our_checkpoint_body(go_note: Any) -> None:
    # Go's tlog.FormatTree writes a checkpoint with the fixed origin "go.sum database tree".
    checkpoint = Checkpoint("go.sum database tree", 2**63 - 1, ROOT)
    made, parsed, zero = go_note(
        {"op": "formattree", "n": checkpoint.size, "hash": _b64(ROOT)},
        {"op": "parsetree", "text": checkpoint.body()},
        {"op": "parsetree", "text": "go.sum database tree\n07\n" + _R + "\n"},
    )
    assert made == {"body": checkpoint.body()}
    assert parsed == {"n": checkpoint.size, "hash": _R}
    assert "error" in zero


def test_go_skips_a_second_signature_by_a_known_key_we_verify_it(go_note: Any) -> None:
    # signed-note: "If the key name and ID match a known key, verifiers MUST verify the
    # signature". Go's note.Open verifies only the first line per key; we verify each.
    message = Note(BODY, (_LOG_SIG, _BAD_LOG_SIG)).format()
    (answer,) = go_note({"op": "open", "note": _b64(message), "vkeys": [LOG.text()]})
    assert answer["sigs"] == [{"name": LOG.name, "hash": LOG.key_id}]
    with pytest.raises(NoteSignatureError, match="does not verify"):
        verify_note(parse_note(message), [LOG])
