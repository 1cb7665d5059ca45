"""One config file (TOML) plus environment overrides: which store, where.

Lookup order for the store URL: `--store` on the command line, `MEDLAKE_STORE`, `medlake.toml`
(`[store] url = …`) in the working directory or the file named by `MEDLAKE_CONFIG`, then the default
`duckdb:./medlake-data/medlake.duckdb`.

The data folder (landing, quarantine) is `MEDLAKE_DATA_DIR`, else `[site] data_dir`, else the folder of the
DuckDB store file, else `medlake-data`.
"""
from __future__ import annotations

import re

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STORE = "duckdb:medlake-data/medlake.duckdb"
CDM_SOURCE = {"name": "cdm_source_name", "abbreviation": "cdm_source_abbreviation", "holder": "cdm_holder",
              "description": "source_description", "documentation": "source_documentation_reference"}  # [site] keys


class ConfigError(ValueError):
    """The config file is wrong; the message names file, key and reason."""


class OptionError(ValueError):
    """A command's option names nothing there is (a table, a check type, level or severity, a CDM version), or its
    options together select nothing: a usage error, as a wrong option (the CLI exits 2)."""


@dataclass(frozen=True)
class Config:
    store: str
    cdm_version: str
    source: str  # where the settings came from, for messages
    data: dict
    data_dir: str = "medlake-data"

    @property
    def landing_dir(self) -> Path:
        return Path(self.data_dir) / "landing"

    @property
    def cdm_source(self) -> dict[str, str]:
        """The site's names for its CDM (`[site] name`, `abbreviation`, `holder`, `description`,
        `documentation`): the `cdm_source` row that DQD's results, its viewer and ARES name the data source by."""
        return {CDM_SOURCE[k]: v for k, v in self.data.get("site", {}).items() if k in CDM_SOURCE and v}


def load(path: str | Path | None = None, store: str | None = None) -> Config:
    named = path or os.environ.get("MEDLAKE_CONFIG")
    path = Path(named or "medlake.toml")
    data: dict = {}
    origin = "defaults"
    if named and not path.is_file():  # only ./medlake.toml may be absent (defaults); a named file is meant
        raise ConfigError(f"{path}: no such config file")
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
    site = data.get("site", {})
    if not isinstance(site, dict):
        raise ConfigError(f"{path}: [site] must be a table")
    data_dir = os.environ.get("MEDLAKE_DATA_DIR") or site.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise ConfigError(f"{path}: site.data_dir must be a string")
    for key in CDM_SOURCE:
        if not isinstance(site.get(key, ""), str):
            raise ConfigError(f"{path}: site.{key} must be a string")
    if not data_dir:
        data_dir = str(Path(url.removeprefix("duckdb:").partition("?")[0]).parent) \
            if url.startswith("duckdb:") and url.removeprefix("duckdb:").partition("?")[0] not in ("", ":memory:") \
            else "medlake-data"
    return Config(store=url, cdm_version=str(version), source=origin, data=data, data_dir=data_dir)


def redact(url: str) -> str:
    """A store URL without its password (`user:password@`, a `password=` parameter): for messages, reports and the
    records that name the store."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        url = f"{scheme}://{cred.split(':', 1)[0]}@{host}"
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)
