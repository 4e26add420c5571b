"""The witness's Ed25519 key: a PEM PKCS#8 file of mode 0600, and its cosignature/v1 vkey.

Unlike the signer's keys, the witness key lives in a file: a witness is a small
separate service that anyone may run, and tlog-cosignature's Ed25519 type
needs nothing more. The file is refused when group or others may read or
write it (the rule ``check_secret_file`` applies to every secret file).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tuf_signer.audit._note import COSIGNATURE_V1, NoteSignature, VerifierKey, cosign_text
from tuf_signer.config._secrets import check_secret_file
from tuf_signer.errors import ConfigError


class WitnessKey:
    """The witness's private key with its name; signs cosignature/v1 lines.

    Attributes:
        vkey: the public verifier key (type 0x04), as logs and clients configure it.
    """

    def __init__(self, name: str, private: Ed25519PrivateKey) -> None:
        self._private = private
        public = private.public_key().public_bytes_raw()
        self.vkey = VerifierKey(name, COSIGNATURE_V1, public)

    def __repr__(self) -> str:
        return f"WitnessKey({self.vkey.text()!r})"  # never the private key

    @classmethod
    def generate(cls, name: str) -> WitnessKey:
        """A new random key named ``name``.

        Raises:
            NoteFormatError: ``name`` is not a valid key name.
        """
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path, name: str, setting: str = "witness.key_file") -> WitnessKey:
        """Read the PEM PKCS#8 Ed25519 private key in ``path``.

        Raises:
            ConfigError: naming ``setting``: the file is missing, readable or
                writable by group or others, or not an unencrypted Ed25519 PEM key.
        """
        check_secret_file(path, setting)
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as e:
            raise ConfigError(f"{setting}: cannot read {path}: {e.strerror}") from e
        except (ValueError, TypeError):
            # The library's message may quote the file; say only what is wrong.
            raise ConfigError(f"{setting}: {path} is not an unencrypted PEM private key") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"{setting}: {path} is not an Ed25519 key")
        return cls(name, private)

    def pem(self) -> bytes:
        """The private key as unencrypted PEM PKCS#8 (the key file's content)."""
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def cosign(self, body: str, timestamp: int) -> NoteSignature:
        """A cosignature/v1 line over the checkpoint text ``body`` at ``timestamp``.

        Raises:
            NoteFormatError: the timestamp is out of range or ``body`` is not a note text.
            SignatureMismatchError: the signature does not verify (it always should).
        """
        return cosign_text(body, self.vkey, timestamp, self._private.sign)
