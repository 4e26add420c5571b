"""Registers the ``tufsigner:`` private-key URI in securesystemslib, lazily, for every process.

securesystemslib 1.x finds signers only in ``SIGNER_FOR_URI_SCHEME`` and has no
plugin entry points, and RSTUF never imports ``tuf_signer``. So tuf-signer
installs ``tuf_signer_hook.pth``, whose one line imports this module when
Python starts. It must cost next to nothing there: it imports only ``sys`` (already
loaded) and puts one finder at the front of ``sys.meta_path``. The finder
does nothing until ``securesystemslib.signer._signer`` is first imported; then it
adds a stand-in class for ``tufsigner`` to ``SIGNER_FOR_URI_SCHEME``. Only
``Signer.from_priv_key_uri("tufsigner:…")`` imports the real plugin (and so
gRPC), which then replaces the stand-in.

A scheme somebody registered first is left alone (``setdefault``).
"""

import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing at start-up costs ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    from securesystemslib.signer import Key, SecretsHandler, Signer

SCHEME = "tufsigner"
_TARGET = "securesystemslib.signer._signer"


def _register(module: "ModuleType") -> None:
    """Add the stand-in to the module's scheme table; a module we do not know is left as is."""
    table = getattr(module, "SIGNER_FOR_URI_SCHEME", None)
    base = getattr(module, "Signer", None)
    if not isinstance(table, dict) or not isinstance(base, type):
        return

    class TufSignerSignerStandIn(base):  # type: ignore[misc,valid-type]  # a runtime base
        """Stands for ``tuf_signer.client.TufSignerSigner`` until a URI needs it."""

        # Abstract (no sign, no public_key): never instantiated, only dispatched to.
        @classmethod
        def from_priv_key_uri(
            cls,
            priv_key_uri: str,
            public_key: "Key",
            secrets_handler: "SecretsHandler | None" = None,
        ) -> "Signer":
            from tuf_signer.client._signer import TufSignerSigner, register

            register()  # the real class takes over the scheme
            return TufSignerSigner.from_priv_key_uri(priv_key_uri, public_key, secrets_handler)

    TufSignerSignerStandIn.SCHEME = SCHEME
    table.setdefault(SCHEME, TufSignerSignerStandIn)


class _Loader:
    """Wraps the real loader of ``securesystemslib.signer._signer``: registers after it ran."""

    def __init__(self, loader: "Loader") -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)  # get_source, is_package, ... as the real loader

    def create_module(self, spec: "ModuleSpec") -> "ModuleType | None":
        return self._loader.create_module(spec)

    def exec_module(self, module: "ModuleType") -> None:
        self._loader.exec_module(module)
        _register(module)


class _Finder:
    """Finds ``securesystemslib.signer._signer`` as the other finders would, with our loader."""

    def find_spec(
        self,
        fullname: str,
        path: "Sequence[str] | None" = None,
        target: "ModuleType | None" = None,
    ) -> "ModuleSpec | None":
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: ModuleSpec | None = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)  # type: ignore[assignment]  # duck-typed
                return spec
        return None


def install() -> None:
    """Install the finder once; register at once if securesystemslib is already loaded."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
    loaded = sys.modules.get(_TARGET)
    if loaded is not None:
        _register(loaded)


install()
