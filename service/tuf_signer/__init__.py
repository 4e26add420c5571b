"""tuf-signer."""
