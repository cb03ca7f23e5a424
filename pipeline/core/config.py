"""Configuration: dataclass schemas + YAML defaults in ``configs/`` + ``key=value`` overrides.

``load_config(Schema, "index", ["model.pretrained=none"])`` returns a ``Schema`` instance.
Unknown keys, wrong types and missing values raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tomeray.models.errors import ConfigError

__all__ = ["MISSING", "ConfigError", "config_to_dict", "default_yaml_path", "load_config", "save_config",
           "split_overrides"]

T = TypeVar("T")


def default_yaml_path(name: str) -> Path:
    """Path of ``configs/<name>.yaml`` shipped with the package."""
    return Path(str(resources.files("tomeray.configs").joinpath(f"{name}.yaml")))


def _field_types(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _dataclass_of(t: Any) -> type | None:
    """The dataclass behind a field type: ``X`` or an optional ``X | None``."""
    if dataclasses.is_dataclass(t):
        return t
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _check_keys(schema: type, data: Mapping, prefix: str = "") -> None:
    """Reject keys the schema does not declare, naming the key and the valid ones."""
    types = _field_types(schema)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in types:
            valid = ", ".join(sorted(types))
            raise ConfigError(f"unknown config key '{full}'; valid keys here: {valid}")
        sub = _dataclass_of(types[key])
        if sub is not None and isinstance(value, Mapping):
            _check_keys(sub, value, prefix=f"{full}.")


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {e}") from None


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def load_config(
    schema: type[T],
    defaults: str | Path | Mapping | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Build a config: schema defaults < YAML (a ``configs/`` name, a path or a mapping) < overrides."""
    layers: list[tuple[str, Any]] = []
    if defaults is not None:
        if isinstance(defaults, Mapping):
            layers.append(("defaults", OmegaConf.create(dict(defaults))))
        else:
            path = Path(defaults)
            if not path.suffix:
                path = default_yaml_path(str(defaults))
            if not path.is_file():
                raise ConfigError(f"config file '{path}' does not exist")
            layers.append((str(path), OmegaConf.load(path)))
    if overrides:
        layers.append(("overrides", _parse_overrides(overrides)))

    cfg = OmegaConf.structured(schema)
    for source, layer in layers:
        _check_keys(schema, OmegaConf.to_container(layer, resolve=False), prefix="")
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            expected = _expected_type(schema, key)
            raise ConfigError(
                f"config key '{key}' (from {source}): expected {expected}, got {getattr(e, 'value', None)!r}"
            ) from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"config key '{missing[0]}' has no value; set it with {missing[0]}=...")
    return OmegaConf.to_object(cfg)


def _expected_type(schema: type, dotted: str) -> str:
    t: Any = schema
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(t):
            break
        t = _field_types(t).get(part, t)
    return _type_name(t)


def config_to_dict(cfg: Any) -> dict:
    """A plain dict of a dataclass config (for manifests and logs)."""
    if dataclasses.is_dataclass(cfg):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    return dict(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML next to an output (atomically)."""
    from tomeray.pipeline.core.atomic import atomic_write_text

    return atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg))))


# ``section.key=value`` (at least one dot): what a command line item must look like to be an override.
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split command-line items into (other items, ``section.key=value`` overrides). An item that
    names an existing file is never an override, so inputs like ``a.b=c.mp4`` still work."""
    overrides = [s for s in items if _OVERRIDE.match(s) and not os.path.exists(s)]
    return [s for s in items if s not in overrides], overrides
