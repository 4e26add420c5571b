"""Zero-touch registration (issue 14, item 1): ``tuf_signer_hook.pth`` and ``_tuf_signer_hook``.

Installing tuf-signer makes ``Signer.from_priv_key_uri("tufsigner:…")`` work in
a process that never imports ``tuf_signer``, without importing gRPC (or
anything of ours but one small module) at start-up. The plugin imports
nothing server-side, so it runs without python-pkcs11 and the server's
dependencies. Each check runs in a fresh interpreter of this environment.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from securesystemslib.signer import Signer

import _tuf_signer_hook
from tuf_signer.client import SignerUri

from .conftest import RunningSigner

# What a client-only install lacks: the server's own dependencies (pyproject.toml).
SERVER_ONLY = ["pkcs11", "orjson", "grpc_health", "grpc_reflection", "psycopg", "prometheus_client"]
# The plugin's modules may come from these parts of the package only.
CLIENT_SIDE = ("tuf_signer.client", "tuf_signer.v1")
SHARED = {"tuf_signer", "tuf_signer.errors", "tuf_signer.model", "tuf_signer._net"}


def fresh_python(code: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run ``code`` in a new interpreter of this venv with an almost empty environment.

    The code prints one JSON object, which is returned.
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={"PATH": os.environ.get("PATH", ""), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_the_pth_line_is_installed_and_start_up_imports_only_the_hook() -> None:
    lines = [
        (Path(d) / "tuf_signer_hook.pth").read_text()
        for d in site.getsitepackages()
        if (Path(d) / "tuf_signer_hook.pth").exists()
    ]
    assert lines == [
        'import sys; exec("try:\\n import _tuf_signer_hook\\nexcept ImportError:\\n pass")\n'
    ], "pip install -e . writes it (setup.py)"
    out = fresh_python(
        """
        import json, sys
        print(json.dumps({"modules": sorted(sys.modules)}))
        """
    )
    modules = out["modules"]
    assert isinstance(modules, list)
    assert "_tuf_signer_hook" in modules
    heavy = [m for m in modules if m.split(".")[0] in {"grpc", "google", "securesystemslib"}]
    ours = [m for m in modules if m.startswith("tuf_signer")]
    assert heavy == [] and ours == []


def test_the_hook_imports_nothing_else() -> None:
    """Without site (``-S``), importing the hook by hand adds itself and nothing more."""
    proc = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import sys; before = set(sys.modules); sys.path.append(sys.argv[1]); "
            "import _tuf_signer_hook; print(sorted(set(sys.modules) - before))",
            str(Path(_tuf_signer_hook.__file__).parent),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "['_tuf_signer_hook']", proc.stderr


def test_a_process_that_never_imports_tuf_signer_signs(signer_server: RunningSigner) -> None:
    s = signer_server
    uri = SignerUri(s.address, "online")
    out = fresh_python(
        f"""
        import json, sys
        from datetime import UTC, datetime, timedelta
        from securesystemslib.signer import SIGNER_FOR_URI_SCHEME, Signer, SSlibKey
        from tuf.api.metadata import Metadata, MetaFile, Timestamp

        stand_in = SIGNER_FOR_URI_SCHEME["tufsigner"].__name__
        lazy = "tuf_signer.client" not in sys.modules
        key = SSlibKey.from_dict({s.active["keyid"]!r}, {s.active["public_key"]!r})
        signer = Signer.from_priv_key_uri({str(uri)!r}, key)
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        ts = Metadata(Timestamp(version=1, expires=expires, snapshot_meta=MetaFile(1)))
        ts.sign(signer)
        key.verify_signature(ts.signatures[key.keyid], ts.signed_bytes)
        print(json.dumps({{
            "stand_in": stand_in,
            "lazy": lazy,
            "signer": type(signer).__name__,
            "now_registered": SIGNER_FOR_URI_SCHEME["tufsigner"].__name__,
        }}))
        """
    )
    assert out == {
        "stand_in": "TufSignerSignerStandIn",
        "lazy": True,
        "signer": "TufSignerSigner",
        "now_registered": "TufSignerSigner",
    }
    (state,) = s.client.role_state("online", "timestamp")
    assert state["version"] == 1


def test_the_plugin_runs_without_the_server_dependencies(signer_server: RunningSigner) -> None:
    """A client-only install: python-pkcs11 and the other server packages unimportable."""
    s = signer_server
    uri = SignerUri(s.address, "online", "snapshot")
    out = fresh_python(
        f"""
        import json, sys
        for name in {SERVER_ONLY!r}:
            sys.modules[name] = None  # import name -> ImportError, as if not installed
        from datetime import UTC, datetime, timedelta
        from securesystemslib.signer import Signer, SSlibKey
        from tuf.api.metadata import Metadata, MetaFile, Snapshot

        key = SSlibKey.from_dict({s.active["keyid"]!r}, {s.active["public_key"]!r})
        signer = Signer.from_priv_key_uri({str(uri)!r}, key)
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        snap = Metadata(Snapshot(version=1, expires=expires, meta={{"targets.json": MetaFile(1)}}))
        snap.sign(signer)
        key.verify_signature(snap.signatures[key.keyid], snap.signed_bytes)
        print(json.dumps({{"ours": sorted(m for m in sys.modules if m.startswith("tuf_signer"))}}))
        """
    )
    ours = out["ours"]
    assert isinstance(ours, list) and "tuf_signer.client._signer" in ours
    assert [m for m in ours if not m.startswith(CLIENT_SIDE) and m not in SHARED] == []


def test_a_scheme_registered_before_is_left_alone() -> None:
    class Mine(Signer):
        pass

    module = types.ModuleType("fake")
    module.Signer = Signer
    module.SIGNER_FOR_URI_SCHEME = {"tufsigner": Mine}
    _tuf_signer_hook._register(module)
    assert {"tufsigner": Mine} == module.SIGNER_FOR_URI_SCHEME
    module.SIGNER_FOR_URI_SCHEME = {}
    _tuf_signer_hook._register(module)
    stand_in = module.SIGNER_FOR_URI_SCHEME["tufsigner"]
    assert issubclass(stand_in, Signer) and stand_in.SCHEME == "tufsigner"
    # A securesystemslib without the table is not touched (and does not crash start-up).
    _tuf_signer_hook._register(types.ModuleType("other"))


@pytest.mark.parametrize("flag", ["-S", "-I"])
def test_where_site_does_not_run_register_is_needed(flag: str) -> None:
    """``python -S`` skips .pth files: the scheme is then unknown until ``register()``."""
    proc = subprocess.run(
        [
            sys.executable,
            flag,
            "-c",
            "import sys; print('_tuf_signer_hook' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == ("False" if flag == "-S" else "True")
