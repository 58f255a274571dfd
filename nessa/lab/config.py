"""Building the nessa config dataclasses from what callers and artifacts hold."""
from __future__ import annotations

import dataclasses
from typing import Callable, TypeVar

Config = TypeVar("Config")


def config_from_any(cls: type[Config], config, label: str,
                    prepare: Callable[[dict], dict] | None = None) -> Config:
    """None -> defaults; an instance -> itself; a mapping (a CLI dict, or the config stored
    in an artifact's JSON, where tuples became lists) -> checked for unknown keys, lists
    turned back into tuples, then `prepare`d."""
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = set(config) - known
    if unknown:
        raise ValueError(f"unknown {label} config keys {sorted(unknown)}; known: {sorted(known)}")
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in config.items()}
    return cls(**(prepare(values) if prepare else values))
