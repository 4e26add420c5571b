"""Signed notes (c2sp.org/signed-note) with Ed25519 signatures and v1 cosignatures.

A note is UTF-8 text ending in a newline, a blank line, then one or more
signature lines ``— <key name> base64(key ID || signature)``. The audit log's
checkpoints are notes signed by the audit key (type 0x01); witnesses add
timestamped cosignatures (type 0x04, c2sp.org/tlog-cosignature). The rules here
follow the specs and read every note the way Go's ``golang.org/x/mod/sumdb/note``
does, refusing a few inputs it accepts (non-canonical base64, uppercase hex,
control characters in names), so no note has two readings. Pure: no I/O, and
signing goes through a callback so that the private key can stay in the HSM.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tuf_signer.errors import SignatureMismatchError, TufSignerError, shown

# Signature type bytes (signed-note "Signature types").
ED25519 = 0x01
COSIGNATURE_V1 = 0x04  # tlog-cosignature "Format": timestamped Ed25519
SIGNATURE_TYPES = frozenset({ED25519, COSIGNATURE_V1})

# signed-note "Format": verifiers SHOULD limit the number of signatures and MUST
# accept at least 16; Go's reader stops at 100, so do we.
MAX_SIGNATURES = 100
# The same bound as Go's tlog.ParseTree. A checkpoint with 100 cosignatures is ~12 KB.
MAX_NOTE_BYTES = 1_000_000
MAX_TIMESTAMP = 2**63 - 1  # tlog-cosignature: the timestamp MUST NOT exceed 2^63 - 1

_SIG_PREFIX = "\u2014 "  # em dash, space
_ED25519_KEY_SIZE = 32
_ED25519_SIG_SIZE = 64
_COSIG_SIZE = 8 + _ED25519_SIG_SIZE  # timestamped_signature: u64 timestamp || signature
_HEX_ID = re.compile(r"[0-9a-f]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")

# "Unicode spaces" (signed-note "Format") read as Go's unicode.IsSpace reads them:
# the Unicode White_Space property. The test suite compares this set with Go's.
UNICODE_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)


class NoteError(TufSignerError):
    """A signed note, key text, checkpoint or proof text is not acceptable."""

    code = "INVALID_ARGUMENT"


class NoteFormatError(NoteError):
    """The text breaks a rule of the spec it claims to follow (it is malformed)."""


class NoteSignatureError(NoteError):
    """A signature from a known key fails to verify, or no known key signed.

    Attributes:
        name: the key name of the failing signature, or None when no known
            key signed at all.
        key_id: that signature's key ID, or None.
    """

    code = "PERMISSION_DENIED"

    def __init__(self, reason: str, name: str | None = None, key_id: int | None = None) -> None:
        super().__init__(reason)
        self.name = name
        self.key_id = key_id


def b64encode(data: bytes) -> str:
    """Standard base64 with padding (RFC 4648 §4), as every C2SP text uses it."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, what: str) -> bytes:
    """Decode canonical standard base64 (RFC 4648 §4); one encoding per byte string.

    Go's decoder also accepts non-zero padding bits; an honest encoder never
    writes them, and refusing them keeps every text to a single reading.

    Raises:
        NoteFormatError: ``text`` is not the canonical base64 of some bytes.
    """
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise NoteFormatError(f"{what} is not base64: {shown(text)}") from None
    if b64encode(data) != text:
        raise NoteFormatError(f"{what} is not canonical base64: {shown(text)}")
    return data


def parse_decimal(text: str, what: str, maximum: int = MAX_TIMESTAMP) -> int:
    """Parse an ASCII decimal with no leading zeroes (tlog-checkpoint, -cosignature, -proof).

    Raises:
        NoteFormatError: ``text`` is not such a decimal, or exceeds ``maximum``.
    """
    if len(text) > 20 or not _DECIMAL.fullmatch(text):
        raise NoteFormatError(f"{what} is not a decimal without leading zeroes: {shown(text)}")
    value = int(text)
    if value > maximum:
        raise NoteFormatError(f"{what} {value} is above {maximum}")
    return value


def check_text(text: str, what: str) -> None:
    """Check the character rules of signed-note "Format".

    Notes MUST NOT contain ASCII control characters (below U+0020) other than
    newline. (A ``str`` is Unicode already; bytes are decoded strictly in
    ``parse_note``, which refuses invalid UTF-8 and encoded surrogates.)

    Raises:
        NoteFormatError: ``text`` holds such a character or a lone surrogate.
    """
    for char in text:
        if (char < " " and char != "\n") or "\ud800" <= char <= "\udfff":
            raise NoteFormatError(f"{what} contains the character {char!r}")


def check_key_name(name: str) -> None:
    """Check a key name (signed-note "Format"): non-empty, no Unicode space nor ``+``.

    Raises:
        NoteFormatError: the name breaks one of these rules, or holds a
            control character (which no note may contain).
    """
    if not name:
        raise NoteFormatError("key name is empty")
    if "+" in name or any(char in UNICODE_SPACES for char in name):
        raise NoteFormatError(f"key name contains a space or '+': {shown(name)}")
    check_text(name, "key name")


def key_id(name: str, sig_type: int, public_key: bytes) -> int:
    """The key ID: SHA-256(name || 0x0A || signature type || public key)[:4], big-endian.

    signed-note "Signatures" (RECOMMENDED; Go's reader requires it) and
    tlog-cosignature "Format" (MUST for type 0x04).
    """
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def cosignature_message(body: str, timestamp: int) -> bytes:
    """The message a cosignature/v1 signs (tlog-cosignature "Ed25519 signed message").

    ``cosignature/v1\\ntime <timestamp>\\n`` followed by the whole checkpoint
    note text, extension lines included, without the signature lines.

    Raises:
        NoteFormatError: ``timestamp`` is negative or above 2^63 - 1.
    """
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteFormatError(f"cosignature timestamp {timestamp} is out of range")
    return f"cosignature/v1\ntime {timestamp}\n".encode() + body.encode()


@dataclass(frozen=True)
class VerifierKey:
    """A public key known to verifiers: a signed-note vkey of type 0x01 or 0x04.

    Attributes:
        name: the key name; for a log, its origin line (tlog-checkpoint "Signatures").
        sig_type: ``ED25519`` (a log's key) or ``COSIGNATURE_V1`` (a witness's).
        public_key: the 32-byte Ed25519 public key (RFC 8032).
        key_id: derived from the three above (``key_id``).
    """

    name: str
    sig_type: int
    public_key: bytes
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if self.sig_type not in SIGNATURE_TYPES:
            raise NoteFormatError(f"unsupported signature type 0x{self.sig_type:02x}")
        if len(self.public_key) != _ED25519_KEY_SIZE:
            raise NoteFormatError(f"Ed25519 public key has {len(self.public_key)} bytes, not 32")
        object.__setattr__(self, "key_id", key_id(self.name, self.sig_type, self.public_key))

    def text(self) -> str:
        """The vkey ``<name>+hex(key ID)+base64(type || key)`` (signed-note "Verifier keys")."""
        material = b64encode(bytes([self.sig_type]) + self.public_key)
        return f"{self.name}+{self.key_id:08x}+{material}"

    def verify(self, text: str, signature: bytes) -> int | None:
        """Verify one signature (the bytes after the key ID) over a note text.

        Returns:
            The cosignature's timestamp for a type 0x04 key, None for type 0x01.

        Raises:
            NoteSignatureError: the signature does not verify, or has the
                wrong length for this key's type.
        """
        timestamp = None
        message = text.encode()
        if self.sig_type == COSIGNATURE_V1:
            # tlog-cosignature: timestamped_signature = u64 timestamp || Ed25519 signature.
            if len(signature) != _COSIG_SIZE:
                raise self._failed(f"has {len(signature)} bytes, not {_COSIG_SIZE}")
            timestamp = int.from_bytes(signature[:8], "big")
            if timestamp > MAX_TIMESTAMP:
                raise self._failed(f"has timestamp {timestamp}, above 2^63 - 1")
            message = cosignature_message(text, timestamp)
            signature = signature[8:]
        elif len(signature) != _ED25519_SIG_SIZE:
            raise self._failed(f"has {len(signature)} bytes, not {_ED25519_SIG_SIZE}")
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            raise self._failed("does not verify") from None
        return timestamp

    def _failed(self, why: str) -> NoteSignatureError:
        return NoteSignatureError(
            f"signature by {shown(self.name)}+{self.key_id:08x} {why}", self.name, self.key_id
        )


def parse_verifier_key(text: str) -> VerifierKey:
    """Parse a vkey ``<name>+hex(key ID)+base64(type || public key)`` (signed-note "Verifier keys").

    The key ID must be 8 lowercase hex digits and equal the ID derived from the
    name, type and key, as Go's ``note.NewVerifier`` requires.

    Raises:
        NoteFormatError: the text is malformed, its type is not 0x01 or 0x04,
            or its key ID does not match.
    """
    parts = text.split("+", 2)  # the base64 key material may hold "+"
    if len(parts) != 3:
        raise NoteFormatError(f"verifier key is not name+id+key: {shown(text)}")
    name, hex_id, material = parts
    check_key_name(name)
    if not _HEX_ID.fullmatch(hex_id):
        raise NoteFormatError(f"verifier key ID is not 8 lowercase hex digits: {shown(hex_id)}")
    raw = b64decode(material, "verifier key material")
    if not raw:
        raise NoteFormatError("verifier key material is empty")
    key = VerifierKey(name, raw[0], raw[1:])
    if key.key_id != int(hex_id, 16):
        raise NoteFormatError(
            f"verifier key ID {hex_id} does not match its name and key ({key.key_id:08x})"
        )
    return key


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, key ID and the signature bytes after the ID."""

    name: str
    key_id: int
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not 0 <= self.key_id < 2**32:
            raise NoteFormatError(f"key ID {self.key_id} is not a uint32")
        if not self.signature:
            raise NoteFormatError("signature is empty")

    def line(self) -> str:
        """``— <name> base64(key ID || signature)`` and a newline (signed-note "Format")."""
        encoded = b64encode(self.key_id.to_bytes(4, "big") + self.signature)
        return f"{_SIG_PREFIX}{self.name} {encoded}\n"


@dataclass(frozen=True)
class Note:
    """A note text and its signature lines, in order (duplicates kept as written).

    Attributes:
        text: the note text, ending in a newline, without the blank separator line.
        signatures: one or more signature lines.
    """

    text: str
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        if not self.text.endswith("\n"):
            raise NoteFormatError("note text does not end in a newline")
        check_text(self.text, "note text")
        if not self.signatures:
            raise NoteFormatError("note has no signature line")
        if len(self.signatures) > MAX_SIGNATURES:
            raise NoteFormatError(f"note has more than {MAX_SIGNATURES} signatures")

    def format(self) -> bytes:
        """The signed note: text, blank line, signature lines (signed-note "Format")."""
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode()

    def with_signature(self, signature: NoteSignature) -> Note:
        """This note with one more signature line at the end (e.g. a cosignature)."""
        return Note(self.text, (*self.signatures, signature))


def parse_note(message: bytes) -> Note:
    """Parse a signed note, checking every rule of signed-note "Format"; verify nothing.

    The text ends at the last blank line; what follows must be one or more
    complete signature lines whose names are valid and whose base64 holds a
    4-byte key ID and at least one byte of signature.

    Raises:
        NoteFormatError: the note is too large, not UTF-8, holds a control
            character, has no separator or signature line, or a signature line
            is malformed.
    """
    if len(message) > MAX_NOTE_BYTES:
        raise NoteFormatError(f"note is larger than {MAX_NOTE_BYTES} bytes")
    try:
        decoded = message.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NoteFormatError(f"note is not valid UTF-8 (byte {e.start})") from None
    check_text(decoded, "note")
    split = decoded.rfind("\n\n")
    if split < 0:
        raise NoteFormatError("note has no blank line before its signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    if not block.endswith("\n"):
        raise NoteFormatError("note does not end with a complete signature line")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:  # before decoding any of them
        raise NoteFormatError(f"note has more than {MAX_SIGNATURES} signature lines")
    return Note(text, tuple(_parse_signature_line(line) for line in lines))


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(_SIG_PREFIX):
        raise NoteFormatError(f"signature line does not start with an em dash: {shown(line)}")
    name, space, encoded = line[len(_SIG_PREFIX) :].partition(" ")
    if not space:
        raise NoteFormatError(f"signature line has no signature: {shown(line)}")
    check_key_name(name)
    raw = b64decode(encoded, "signature")
    if len(raw) < 5:
        raise NoteFormatError(f"signature by {shown(name)} is shorter than 5 bytes")
    return NoteSignature(name, int.from_bytes(raw[:4], "big"), raw[4:])


@dataclass(frozen=True)
class VerifiedSignature:
    """A signature line that verified, the key that made it, and its cosignature time."""

    key: VerifierKey
    timestamp: int | None


def verify_note(note: Note, verifiers: Iterable[VerifierKey]) -> tuple[VerifiedSignature, ...]:
    """Verify a note's signatures against known keys (signed-note "Signatures").

    Signatures whose (name, key ID) match no known key are ignored. Every
    signature that matches one is verified, and any failure rejects the whole
    note. At least one must verify. Callers that need a particular key (a
    checkpoint's log key) check the result; see ``open_checkpoint``.

    Returns:
        The signatures that verified, in note order.

    Raises:
        NoteFormatError: two verifiers share a name and key ID (ambiguous).
        NoteSignatureError: a known key's signature fails, or none verifies.
    """
    known: dict[tuple[str, int], VerifierKey] = {}
    for key in verifiers:
        if (key.name, key.key_id) in known and known[key.name, key.key_id] != key:
            raise NoteFormatError(f"two verifier keys are {shown(key.name)}+{key.key_id:08x}")
        known[key.name, key.key_id] = key
    verified = []
    for signature in note.signatures:
        match = known.get((signature.name, signature.key_id))
        if match is not None:
            timestamp = match.verify(note.text, signature.signature)
            verified.append(VerifiedSignature(match, timestamp))
    if not verified:
        raise NoteSignatureError("note has no signature by a known key")
    return tuple(verified)


Signer = Callable[[bytes], bytes]
"""Signs a message with an Ed25519 private key (an HSM, a KMS or, in tests, software)."""


def sign_text(text: str, key: VerifierKey, sign: Signer) -> NoteSignature:
    """Sign a note text with an Ed25519 (type 0x01) key (signed-note "Ed25519 signatures").

    The signature is verified against ``key`` before it is returned, so a
    signer that answers with another key's signature fails closed.

    Raises:
        NoteFormatError: ``key`` is not of type 0x01, or ``text`` is not a note text.
        SignatureMismatchError: ``sign`` returned a signature that does not verify.
    """
    if key.sig_type != ED25519:
        raise NoteFormatError(f"key {shown(key.name)} is not an Ed25519 (0x01) key")
    Note(text, (NoteSignature(key.name, key.key_id, b"\0"),))  # checks the text rules
    return _checked(text, key, sign(text.encode()))


def cosign_text(body: str, key: VerifierKey, timestamp: int, sign: Signer) -> NoteSignature:
    """Cosign a checkpoint note text at ``timestamp`` (tlog-cosignature, cosignature/v1).

    Raises:
        NoteFormatError: ``key`` is not of type 0x04, the timestamp is out of
            range, or ``body`` is not a note text.
        SignatureMismatchError: ``sign`` returned a signature that does not verify.
    """
    if key.sig_type != COSIGNATURE_V1:
        raise NoteFormatError(f"key {shown(key.name)} is not a cosignature/v1 (0x04) key")
    Note(body, (NoteSignature(key.name, key.key_id, b"\0"),))
    signature = sign(cosignature_message(body, timestamp))
    return _checked(body, key, timestamp.to_bytes(8, "big") + signature)


def _checked(text: str, key: VerifierKey, signature: bytes) -> NoteSignature:
    try:
        key.verify(text, signature)
    except NoteSignatureError as e:
        raise SignatureMismatchError(
            f"the signer for {shown(key.name)}+{key.key_id:08x} returned a bad signature"
        ) from e
    return NoteSignature(key.name, key.key_id, signature)
