"""The ``tuf-signer`` command line."""

from tuf_signer.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
