"""Everything about the package is in pyproject.toml, except the ``.pth`` line below.

``tuf_signer_hook.pth`` makes every Python of the environment import the small
``_tuf_signer_hook`` module at start-up, which registers the ``tufsigner:``
URI scheme with securesystemslib lazily (README "Integrating RSTUF"): a
repository such as RSTUF never imports ``tuf_signer`` itself. setuptools has
no setting for a file at the top of site-packages, so ``build_py`` writes it:
into the wheel, and for ``pip install -e`` into the editable wheel.

``tuf_signer.policy._ccanonical`` is the native canonical-JSON check (issue 16).
It is optional: without a C compiler and Python's headers (Debian:
``python3-dev``) the package installs without it and ``parse_canonical`` runs
its pure-Python reference path; ``make test`` insists on it
(TUF_SIGNER_REQUIRE_NATIVE=1). ``tuf_signer.policy._cbins``, the native
path-to-bin check, is optional the same way and also needs OpenSSL's headers
(Debian: ``libssl-dev``).
"""

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

PTH_NAME = "tuf_signer_hook.pth"  # sorts after __editable__.*.pth, which puts service/ on sys.path
# One line (site runs lines that start with "import"); a hook module gone missing
# (a moved editable checkout, a half-done uninstall) must not break every start-up.
PTH_LINE = 'import sys; exec("try:\\n import _tuf_signer_hook\\nexcept ImportError:\\n pass")\n'


class BuildPyWithPth(build_py):
    """``build_py`` that also writes ``tuf_signer_hook.pth`` beside the packages."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            # An editable wheel ignores build_lib; what install_lib holds goes into it.
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        path = Path(target, PTH_NAME)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PTH_LINE)


CANONICAL_EXT = Extension(
    "tuf_signer.policy._ccanonical",
    sources=["service/tuf_signer/policy/_ccanonical.c"],
    # The source is -Wall -Wextra -Werror clean (tests/policy/test_native_canonical.py
    # compiles it so); -Werror stays out of here, where a newer compiler's new
    # warning would silently drop the extension.
    extra_compile_args=["-O2", "-Wall", "-Wextra"],
    optional=True,
)

BINS_EXT = Extension(
    "tuf_signer.policy._cbins",
    sources=["service/tuf_signer/policy/_cbins.c"],
    libraries=["crypto"],  # OpenSSL's SHA-256 (Debian: libssl-dev)
    extra_compile_args=["-O2", "-Wall", "-Wextra"],
    optional=True,
)

setup(cmdclass={"build_py": BuildPyWithPth}, ext_modules=[CANONICAL_EXT, BINS_EXT])
