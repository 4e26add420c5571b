"""Test utilities that ship with tuf-signer, for its own tests and for integrators.

- ``tuf_signer.testing.fake_kms``: a local fake of Google Cloud KMS that speaks
  the real gRPC protocol (needs the ``gcp`` extra). Import it explicitly; this
  package imports nothing heavy.
"""

from __future__ import annotations
