"""Test utilities that ship with tuf-signer, for its own tests and for integrators.

- ``tuf_signer.testing.fake_kms``: a local fake of Google Cloud KMS that speaks
  the real gRPC protocol (needs the ``gcp`` extra).
- ``tuf_signer.testing.softhsm``: SoftHSM2 tooling (module path, private
  configuration, token initialisation) for development signers and tests.

Import them explicitly; this package imports nothing heavy.
"""

from __future__ import annotations
