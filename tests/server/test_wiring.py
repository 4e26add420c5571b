"""The wiring: a parsed config becomes a store, backends and a service."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_config import GOOD
from tuf_signer.audit import STORE_OPENERS, open_audit_store
from tuf_signer.config import BACKEND_PARSERS, load_config
from tuf_signer.errors import ConfigError
from tuf_signer.server._wiring import BACKEND_BUILDERS


def test_every_backend_type_the_config_parses_can_be_built() -> None:
    assert list(BACKEND_BUILDERS) == list(BACKEND_PARSERS)


def test_every_store_the_config_accepts_can_be_opened(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD.replace("[audit]", '[audit]\nstore = "no-such-store"'))
    with pytest.raises(ConfigError, match=r"supported: (.*)\)") as refused:
        load_config(path)
    supported = re.search(r"supported: (.*)\)", str(refused.value))
    assert supported is not None
    accepted = {name.strip(" '") for name in supported[1].split(",")}
    assert accepted == set(STORE_OPENERS) == {"sqlite", "postgres"}


def test_missing_sqlite_file_is_not_created_by_audit_commands(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    config = load_config(path)
    with pytest.raises(ConfigError, match=r"audit\.path: .*audit\.db does not exist"):
        open_audit_store(config.audit, create=False)
    assert not (tmp_path / "audit.db").exists()
