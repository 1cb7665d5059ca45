"""One config file (TOML) plus environment overrides: which store, where.

Lookup order for the store URL: `--store` on the command line, `MEDLAKE_STORE`, `medlake.toml`
(`[store] url = …`) in the working directory or the file named by `MEDLAKE_CONFIG`, then the default
`duckdb:./medlake-data/medlake.duckdb`.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STORE = "duckdb:medlake-data/medlake.duckdb"


class ConfigError(ValueError):
    """The config file is wrong; the message names file, key and reason."""


@dataclass(frozen=True)
class Config:
    store: str
    cdm_version: str
    source: str  # where the settings came from, for messages
    data: dict


def load(path: str | Path | None = None, store: str | None = None) -> Config:
    path = Path(path or os.environ.get("MEDLAKE_CONFIG", "medlake.toml"))
    data: dict = {}
    origin = "defaults"
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from e
        origin = str(path)
    section = data.get("store", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [store] must be a table")
    url = store or os.environ.get("MEDLAKE_STORE") or section.get("url") or DEFAULT_STORE
    if not isinstance(url, str):
        raise ConfigError(f"{path}: store.url must be a string")
    version = os.environ.get("MEDLAKE_CDM_VERSION") or section.get("cdm_version") or "5.4"
    if str(version) not in ("5.4", "5.3"):
        raise ConfigError(f"{path}: store.cdm_version must be \"5.4\" or \"5.3\", not {version!r}")
    return Config(store=url, cdm_version=str(version), source=origin, data=data)
