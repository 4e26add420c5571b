"""SoftHSM2 dev tooling: find the module, write a private configuration, make tokens.

Used by ``tuf-signer dev-init``, the benchmarks and the tests; a production
signer uses an HSM's own tooling instead.

SoftHSM reads ``SOFTHSM2_CONF`` once, at ``C_Initialize``; a process that loads
the library must set it before the first load and keep it for its lifetime.
Tokens created later by ``softhsm2-util`` are invisible to a process that has
already initialised the library until it re-initialises (see
``Pkcs11Backend.start``).
"""

from __future__ import annotations

import glob
import os
import pty
import shutil
import subprocess
from pathlib import Path

from tuf_signer._files import SECRET, make_private_dir, write_new
from tuf_signer.errors import BackendError, ConfigError

__all__ = ["init_token", "softhsm_module_path", "token_directory", "write_softhsm_config"]

_INSTALL_HINT = "install SoftHSM2 (Debian/Ubuntu: apt-get install softhsm2)"

# Where distributions put the module, most common first. Debian's
# /usr/lib/softhsm/libsofthsm2.so is a symlink into the multiarch directory.
_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/*-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)

_UTIL_TIMEOUT = 60.0  # seconds


def softhsm_module_path() -> Path:
    """Find the SoftHSM2 PKCS#11 module on this machine.

    Returns:
        The path of ``libsofthsm2.so``.

    Raises:
        ConfigError: SoftHSM2 is not installed in any known location.
    """
    for pattern in _MODULE_CANDIDATES:
        for found in sorted(glob.glob(pattern)):
            path = Path(found)
            if path.is_file():
                return path
    raise ConfigError(f"libsofthsm2.so not found; {_INSTALL_HINT}")


def write_softhsm_config(dir: Path) -> Path:
    """Write a private SoftHSM2 configuration under ``dir``.

    The token directory is ``dir/tokens`` (created, mode 0700); objects are
    stored as files and only errors are logged. Both are created new: an
    existing ``tokens`` or ``softhsm2.conf`` (a planted symlink included) is
    refused, never reused or written through.

    Args:
        dir: directory to hold ``softhsm2.conf`` and ``tokens/``; created if missing.

    Returns:
        The path of the written ``softhsm2.conf`` (absolute).

    Raises:
        ConfigError: the directory or file exists already or cannot be created.
    """
    base = Path(dir).resolve()
    tokens = base / "tokens"
    conf = base / "softhsm2.conf"
    make_private_dir(tokens)
    write_new(
        conf,
        "# SoftHSM2 configuration written by tuf-signer\n"
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n",
        SECRET,
    )
    return conf


def init_token(conf: Path, label: str, pin: str, so_pin: str) -> None:
    """Initialise a new SoftHSM2 token in the first free slot.

    Runs ``softhsm2-util --init-token --free`` with ``SOFTHSM2_CONF=conf`` and
    types the PINs at its prompts through a pseudo-terminal, so they never
    appear in its argv (``ps``). The PINs are never logged, and errors never
    contain them.

    Args:
        conf: the SoftHSM2 configuration (see ``write_softhsm_config``).
        label: token label (at most 32 bytes of UTF-8); must not exist yet.
        pin: the user PIN (SoftHSM requires 4 to 255 characters).
        so_pin: the security officer PIN (same length rules).

    Raises:
        ConfigError: ``softhsm2-util`` is missing, or a token with ``label``
            already exists in that configuration.
        BackendError: ``softhsm2-util`` failed or timed out.
    """
    for name, value in (("PIN", pin), ("SO PIN", so_pin)):
        # softhsm2-util would prompt again forever for a PIN out of range.
        if not 4 <= len(value) <= 255:
            raise ConfigError(f"a SoftHSM {name} must have 4 to 255 characters")
    if label in _token_labels(conf):
        raise ConfigError(f"a SoftHSM token labelled {label!r} already exists in {conf}")
    _run_util(
        conf,
        ["--init-token", "--free", "--label", label],
        secrets=(pin, so_pin),
        # softhsm2-util asks for the SO PIN twice, then the user PIN twice.
        typed=f"{so_pin}\n{so_pin}\n{pin}\n{pin}\n",
        what=f"initialising SoftHSM token {label!r}",
    )


def token_directory(conf: Path, label: str) -> Path:
    """The directory that holds SoftHSM token ``label`` in configuration ``conf``.

    SoftHSM's file store keeps each token in a directory of its own under
    ``directories.tokendir``, its label (space-padded to 32 bytes) in
    ``token.object``. Tests move that directory away, or make it unreadable,
    to stage an HSM outage.

    Raises:
        ConfigError: ``conf`` names no token directory, or not exactly one
            token there has ``label``.
    """
    tokendir = None
    for line in Path(conf).read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "directories.tokendir":
            tokendir = Path(value.strip())
    if tokendir is None:
        raise ConfigError(f"{conf} sets no directories.tokendir")
    padded = label.encode("utf-8").ljust(32, b" ")
    # The label attribute: its length (32) as 8 bytes, then the padded label.
    needle = (32).to_bytes(8, "big") + padded
    found = [
        d
        for d in sorted(tokendir.iterdir())
        if (d / "token.object").is_file() and needle in (d / "token.object").read_bytes()
    ]
    if len(found) != 1:
        raise ConfigError(f"{len(found)} SoftHSM tokens labelled {label!r} in {tokendir}")
    return found[0]


def _token_labels(conf: Path) -> set[str]:
    """Return the labels of the initialised tokens in ``conf``."""
    out = _run_util(conf, ["--show-slots"], secrets=(), what="listing SoftHSM slots")
    labels = set()
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Label" and value.strip():
            labels.add(value.strip())
    return labels


def _run_util(
    conf: Path, args: list[str], *, secrets: tuple[str, ...], what: str, typed: str = ""
) -> str:
    """Run ``softhsm2-util`` and return its stdout; errors never contain secrets.

    ``typed`` is written to a pseudo-terminal on its standard input: the tool
    reads PINs from a terminal only.
    """
    util = shutil.which("softhsm2-util")
    if util is None:
        raise ConfigError(f"softhsm2-util not found; {_INSTALL_HINT}")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    # The errors below are raised "from None": CalledProcessError and
    # TimeoutExpired carry argv, which holds the PINs, and a chained cause would
    # put them in every logged traceback.
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [util, *args],
            env=env,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        os.close(slave)
        slave = -1
        if typed:
            os.write(master, typed.encode())
        try:
            stdout, stderr = proc.communicate(timeout=_UTIL_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    except subprocess.TimeoutExpired:
        raise BackendError(f"{what}: softhsm2-util timed out after {_UTIL_TIMEOUT:.0f}s") from None
    except OSError as e:
        raise BackendError(f"{what}: cannot run softhsm2-util: {e.strerror}") from None
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    if done.returncode != 0:
        detail = _scrub((done.stderr or done.stdout).strip(), secrets)
        raise BackendError(
            f"{what}: softhsm2-util exited with status {done.returncode}: {detail}"
        ) from None
    return done.stdout


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Remove every secret from ``text`` (softhsm2-util does not echo PINs today)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:500]
