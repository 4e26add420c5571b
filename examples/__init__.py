"""Worked examples; importable so the tests can run them (tests/examples/)."""
