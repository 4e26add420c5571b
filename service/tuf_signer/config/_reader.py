"""Reading one TOML table: types checked, unknown keys refused, gaps filled from the dataclass.

A setting the file leaves out takes the default written on the settings
dataclass's field, so no default is written twice (once there, once here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tuf_signer.errors import ConfigError

Kind = type | tuple[type, ...]

# A setting without a default: the file must give it.
REQUIRED: Any = object()
# Take the default from the settings dataclass's field.
FIELD: Any = object()


def field_default(settings: type, name: str) -> Any:
    """The default written on field ``name`` of dataclass ``settings``, or ``REQUIRED``.

    Raises:
        KeyError: ``settings`` has no such field (a bug in the parser, not the file).
    """
    f = {f.name: f for f in dataclasses.fields(settings)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


@dataclass(frozen=True)
class Table:
    """One TOML table, read setting by setting.

    Attributes:
        data: the table as TOML parsed it.
        where: the prefix that names its settings in messages, e.g. ``server.``.
        settings: the dataclass whose field defaults fill the settings left out.
    """

    data: Mapping[str, Any]
    where: str
    settings: type | None = None

    def get(self, key: str, kind: Kind, default: Any = FIELD, *, field: str = "") -> Any:
        """Setting ``key``, which must be a ``kind``.

        Args:
            key: the setting's name in the file.
            kind: the type (or types) it must have; a boolean is never a number.
            default: its value when left out; by default the default of the
                ``settings`` field of the same name (``REQUIRED`` if it has none).
            field: the field's name when it differs from ``key``.

        Raises:
            ConfigError: the setting has the wrong type, or is required and missing.
        """
        if key not in self.data:
            if default is FIELD:
                assert self.settings is not None
                default = field_default(self.settings, field or key)
            if default is REQUIRED:
                raise ConfigError(f"{self.where}{key}: missing required setting")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; refuse `true` where a number is expected.
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self.where}{key}: expected {_kind_name(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise ConfigError(
                f"{self.where}{key}: expected {_kind_name(kinds)}, got {type(value).__name__}"
            )
        return value

    def number(self, key: str, *, field: str = "") -> float:
        """Setting ``key``, an integer or a float, as a float; see ``get``.

        Raises:
            ConfigError: the setting is not a number, or is required and missing.
        """
        return float(self.get(key, (int, float), field=field))

    def table(self, key: str) -> dict[str, Any]:
        """The sub-table ``key`` (empty when left out).

        Raises:
            ConfigError: ``key`` is not a table.
        """
        return sub_table(self.data, key, self.where)

    def check_known(self, known: Iterable[str]) -> None:
        """Refuse a setting not in ``known`` (a typo must not pass as a default).

        Raises:
            ConfigError: naming the first unknown setting.
        """
        extra = sorted(set(self.data) - set(known))
        if extra:
            raise ConfigError(f"{self.where}{extra[0]}: unknown setting")


def sub_table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    """``data[key]``, a table (empty when left out).

    Raises:
        ConfigError: ``key`` is not a table.
    """
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key}: expected a table")
    return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kinds)
