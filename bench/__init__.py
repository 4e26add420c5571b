"""tuf-signer benchmarks (``make bench``, ``make bench-quick``; README "Performance")."""
