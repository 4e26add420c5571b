"""Where a signer finds its server and TLS files (issue 14, item 2): ``ClientSettings``.

Variables, else ``$TUF_SIGNER_CLIENT_CONFIG``, else
``$ONLINE_KEY_DIR/tuf-signer-client.toml``; no default server; bad files are
errors that name the file and the setting. These need no server, except the
last, which signs over mutual TLS with nothing but a settings file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import Signer, SSlibKey
from tuf.api.metadata import Metadata, MetaFile, Timestamp

from tuf_signer.client import (
    CA_ENV,
    CONFIG_ENV,
    INSECURE_ENV,
    ONLINE_KEY_DIR_ENV,
    SERVER_ENV,
    SETTINGS_FILE_NAME,
    Client,
    ClientSettings,
    TlsConfig,
    TufSignerSigner,
    close_shared_clients,
    register,
    sslib_key,
)
from tuf_signer.errors import ConfigError

from ..server.conftest import make_pki, write_tls_config
from .conftest import ONLINE_BINS, ONLINE_ROLES, ServerThread

KEY = SSlibKey("ab" * 32, "ed25519", "ed25519", {"public": "cd" * 32})


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A directory with tls/ca.crt, tls/backend.crt, tls/backend.key (a dev PKI) and junk."""
    make_pki(tmp_path)
    (tmp_path / "junk.txt").write_text("not a certificate\n")
    return tmp_path


def write(directory: Path, text: str, name: str = SETTINGS_FILE_NAME) -> Path:
    path = directory / name
    path.write_text(text)
    return path


MTLS = (
    'server = "signer.example:50051"\n'
    'ca = "tls/ca.crt"\ncert = "tls/backend.crt"\nkey = "tls/backend.key"\n'
)


# --- where the settings come from ---------------------------------------------------------


def test_online_key_dir_file_with_paths_relative_to_it(pem: Path) -> None:
    write(pem, MTLS)
    settings = ClientSettings.load({ONLINE_KEY_DIR_ENV: str(pem)})
    assert settings.server == "signer.example:50051"
    assert settings.tls == TlsConfig(
        ca=pem / "tls/ca.crt", cert=pem / "tls/backend.crt", key=pem / "tls/backend.key"
    )
    assert str(pem / SETTINGS_FILE_NAME) in settings.source
    server, tls = settings.endpoint(None, "tufsigner:///online")
    assert (server, tls) == ("signer.example:50051", settings.tls)
    # The URI's own HOST:PORT wins over the file's server; TLS stays the file's.
    assert settings.endpoint("other:1", "tufsigner://other:1/online") == ("other:1", settings.tls)


def test_config_env_beats_online_key_dir(pem: Path, tmp_path: Path) -> None:
    write(pem, MTLS)
    named = write(tmp_path, 'server = "127.0.0.1:7"\n', "named.toml")
    settings = ClientSettings.load({ONLINE_KEY_DIR_ENV: str(pem), CONFIG_ENV: str(named)})
    assert settings.server == "127.0.0.1:7"
    assert settings.tls == TlsConfig()


def test_variables_beat_every_file(pem: Path) -> None:
    write(pem, MTLS)
    env = {ONLINE_KEY_DIR_ENV: str(pem), CONFIG_ENV: str(pem / "nope.toml")}
    settings = ClientSettings.load({**env, SERVER_ENV: "127.0.0.1:9"})
    assert (settings.server, settings.tls) == ("127.0.0.1:9", TlsConfig())
    ca_only = ClientSettings.load({**env, CA_ENV: str(pem / "tls/ca.crt")})
    assert ca_only.server is None and ca_only.tls.ca == pem / "tls/ca.crt"


def test_an_absolute_path_stays_absolute(pem: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write(elsewhere, f'server = "127.0.0.1:1"\nca = "{pem / "tls/ca.crt"}"\n')
    assert ClientSettings.load({CONFIG_ENV: str(path)}).tls.ca == pem / "tls/ca.crt"


# --- no default server, no silent plaintext -----------------------------------------------


@pytest.mark.parametrize(
    ("env", "looked"),
    [
        ({}, ["(none set)", f"${CONFIG_ENV} (not set)", f"(${ONLINE_KEY_DIR_ENV} not set)"]),
        (
            {ONLINE_KEY_DIR_ENV: "/nonexistent/keys"},
            ["(none set)", f"${CONFIG_ENV} (not set)", f"/nonexistent/keys/{SETTINGS_FILE_NAME}"],
        ),
    ],
    ids=["nothing-set", "online-key-dir-without-the-file"],
)
def test_no_server_anywhere_names_every_place_looked(
    env: dict[str, str], looked: list[str]
) -> None:
    settings = ClientSettings.load(env)
    with pytest.raises(ConfigError, match="no tuf-signer server") as raised:
        settings.endpoint(None, "tufsigner:///online")
    for place in looked:
        assert place in raised.value.reason
    # The old silent default (plaintext 127.0.0.1:50051) is gone from the plugin.
    with pytest.raises(ConfigError, match="no tuf-signer server"):
        with_env(env, lambda: TufSignerSigner.from_priv_key_uri("tufsigner:///online", KEY))


def test_plaintext_to_a_remote_host_from_a_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'server = "signer.example:50051"\n')
    settings = ClientSettings.load({CONFIG_ENV: str(path)})
    with pytest.raises(ConfigError, match="not a loopback address") as raised:
        settings.endpoint(None, "tufsigner:///online")
    assert str(path) in raised.value.reason and "insecure = true" in raised.value.reason
    # Said explicitly, it is allowed; loopback needs nothing.
    insecure = write(tmp_path, 'server = "signer.example:50051"\ninsecure = true\n', "i.toml")
    assert ClientSettings.load({CONFIG_ENV: str(insecure)}).endpoint(None, "u")[1].insecure
    assert ClientSettings.load({}).endpoint("127.0.0.1:1", "u") == ("127.0.0.1:1", TlsConfig())


# --- bad files: each names the file and what is wrong --------------------------------------


def _unreadable(d: Path) -> Path:
    (d / SETTINGS_FILE_NAME).mkdir()  # a directory: reading it fails even as root
    return d / SETTINGS_FILE_NAME


def _missing_cert_file(d: Path) -> Path:
    (d / "tls/backend.crt").unlink()
    return write(d, MTLS)


def _latin1(d: Path) -> Path:
    path = d / SETTINGS_FILE_NAME
    path.write_bytes('server = "caf\xe9:1"\n'.encode("latin-1"))
    return path


BAD_FILES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing", lambda d: d / "absent.toml", "absent.toml .*: no such file"),
    ("unreadable", _unreadable, "cannot read it: Is a directory"),
    ("not-toml", lambda d: write(d, "server = \n"), "not TOML: "),
    ("not-utf8", lambda d: _latin1(d), "not TOML: "),
    ("unknown-key", lambda d: write(d, MTLS + 'role = "x"\n'), r"unknown setting\(s\) \['role'\]"),
    ("missing-cert", _missing_cert_file, r"cert = 'tls/backend.crt': cannot read .*backend.crt"),
    (
        "missing-ca",
        lambda d: write(d, 'server = "a:1"\nca = "tls/nope.crt"\n'),
        "ca = 'tls/nope.crt': cannot read",
    ),
    ("not-pem", lambda d: write(d, 'server = "a:1"\nca = "junk.txt"\n'), "holds no PEM data"),
    (
        "cert-without-key",
        lambda d: write(d, MTLS.replace('key = "tls/backend.key"\n', "")),
        "cert is set but key is not",
    ),
    (
        "cert-without-ca",
        lambda d: write(d, MTLS.replace('ca = "tls/ca.crt"\n', "")),
        "cert and key need ca",
    ),
    (
        "insecure-with-ca",
        lambda d: write(d, 'server = "a:1"\nca = "tls/ca.crt"\ninsecure = true\n'),
        "insecure = true asks for plaintext but ca is set",
    ),
    ("server-not-a-string", lambda d: write(d, "server = 50051\n"), "server must be a non-empty"),
    ("insecure-not-a-bool", lambda d: write(d, 'insecure = "yes"\n'), "insecure must be true"),
    ("huge", lambda d: write(d, "#" * 70_000 + "\n"), "larger than 65536 bytes"),
]


# Every bad file through TUF_SIGNER_CLIENT_CONFIG and through ONLINE_KEY_DIR; a missing
# file under ONLINE_KEY_DIR is no error (not there: look on), see the no-server test.
CASES = [
    pytest.param(via, make, match, id=f"{name}-{via}")
    for via in (CONFIG_ENV, ONLINE_KEY_DIR_ENV)
    for name, make, match in BAD_FILES
    if not (name == "missing" and via == ONLINE_KEY_DIR_ENV)
]


@pytest.mark.parametrize(("via", "make", "match"), CASES)
def test_bad_settings_files_are_refused_naming_the_file(
    pem: Path, via: str, make: Callable[[Path], Path], match: str
) -> None:
    path = make(pem)
    env = {CONFIG_ENV: str(path)} if via == CONFIG_ENV else {ONLINE_KEY_DIR_ENV: str(pem)}
    with pytest.raises(ConfigError, match=match) as raised:
        ClientSettings.load(env)
    assert f"client settings {path} (from ${via})" in raised.value.reason
    # The plugin refuses the same way when a signer is built.
    with pytest.raises(ConfigError, match=match):
        with_env(env, lambda: Signer.from_priv_key_uri("tufsigner://127.0.0.1:1/online", KEY))


def test_no_key_material_in_errors(pem: Path) -> None:
    secret = (pem / "tls/backend.key").read_text()
    (pem / "tls/backend.key").write_text("-----BEGIN nothing\n" + secret.replace("-", "x"))
    write(pem, MTLS + "bogus = 1\n")
    with pytest.raises(ConfigError) as raised:
        ClientSettings.load({ONLINE_KEY_DIR_ENV: str(pem)})
    assert "PRIVATE" not in raised.value.reason and secret[40:80] not in raised.value.reason


# --- read when the signer is built, and kept ----------------------------------------------


def with_env(env: dict[str, str], call: Callable[[], object]) -> object:
    """``call()`` with ``os.environ`` replaced by ``env`` (as RSTUF's isolated_env does)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        register()
        return call()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def tls_signer(tmp_path: Path, softhsm: object) -> Iterator[tuple[ServerThread, Path]]:
    """A server that takes only mutual TLS from the dev PKI (backend may sign)."""
    make_pki(tmp_path / "signer")
    config = write_tls_config(tmp_path / "signer", softhsm)
    thread = ServerThread(config)
    thread.start()
    try:
        yield thread, tmp_path / "signer"
    finally:
        close_shared_clients()
        thread.stop()


def test_a_signer_built_with_only_online_key_dir_signs_over_mutual_tls(
    tls_signer: tuple[ServerThread, Path], tmp_path: Path
) -> None:
    thread, directory = tls_signer
    tls = directory / "tls"
    online_dir = tmp_path / "online-keys"
    (online_dir / "certs").mkdir(parents=True)
    for name in ("ca.crt", "backend.crt", "backend.key"):
        shutil.copy(tls / name, online_dir / "certs" / name)
    write(
        online_dir,
        f'server = "localhost:{thread.port}"\nca = "certs/ca.crt"\n'
        'cert = "certs/backend.crt"\nkey = "certs/backend.key"\n',
    )
    admin = Client(
        f"localhost:{thread.port}", ca=tls / "ca.crt", cert=tls / "admin.crt", key=tls / "admin.key"
    )
    with admin:
        key = admin.create_key("k", ONLINE_ROLES, activate=True, bins=ONLINE_BINS)
    public = sslib_key(key["versions"][0])
    signer = with_env(
        {ONLINE_KEY_DIR_ENV: str(online_dir)},
        lambda: Signer.from_priv_key_uri("tufsigner:///k", public),
    )
    assert isinstance(signer, TufSignerSigner)
    # Later, another environment (and the file gone): the signer kept its settings.
    (online_dir / SETTINGS_FILE_NAME).unlink()
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    ts = Metadata(Timestamp(version=1, expires=expires, snapshot_meta=MetaFile(1)))
    with_env({INSECURE_ENV: "1", SERVER_ENV: "127.0.0.1:1"}, lambda: ts.sign(signer))
    assert list(ts.signatures) == [public.keyid]
    public.verify_signature(ts.signatures[public.keyid], ts.signed_bytes)
