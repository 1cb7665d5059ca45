"""A CDM store on any engine: create it from the spec, describe it."""
from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

from medlake.cdm import model
from medlake.config import redact

INFO_TABLE = "medlake_info"
INFO = model.Table(
    name=INFO_TABLE,
    schema="MEDLAKE",
    required=True,
    fields=(
        model.Field(INFO_TABLE, "key", True, "varchar(100)", True, None, None, None, None),
        model.Field(INFO_TABLE, "value", False, "varchar(max)", False, None, None, None, None),
    ),
)


def info(engine) -> dict[str, str]:
    if INFO_TABLE not in engine.tables():
        return {}
    rows = engine.query(f"SELECT key, value FROM {INFO_TABLE}").to_pylist()
    return {r["key"]: r["value"] for r in rows}


def set_info(engine, key: str, value: str) -> None:
    """Record `key` = `value` in the store's `medlake_info` (replacing it), in the caller's transaction."""
    if INFO_TABLE not in engine.tables():
        engine.create_table(INFO)
    engine.execute(f"DELETE FROM {INFO_TABLE} WHERE key = ?", [key])
    engine.load_arrow(INFO_TABLE, pa.table({"key": [key], "value": [value]}))


def detect_version(engine) -> tuple[str, str]:
    """(CDM version, how it was found) of a store: medlake's own record; else, for a database medlake did not
    create (an existing OHDSI CDM), its tables — v5.4 renamed visit_occurrence.admitting_source_concept_id to
    admitted_from_concept_id — then `cdm_source.cdm_version` ('v5.3.1', '5.4', …), which sites do not always
    update after a migration; else the default version."""
    version = info(engine).get("cdm_version")
    if version:
        return version, "from the store's record"
    tables = set(engine.tables())
    if "visit_occurrence" in tables:
        cols = {c.name.lower() for c in engine.columns("visit_occurrence")}
        if ("admitted_from_concept_id" in cols) != ("admitting_source_concept_id" in cols):
            v, field = ("5.4", "admitted_from") if "admitted_from_concept_id" in cols else ("5.3", "admitting_source")
            return v, f"from visit_occurrence.{field}_concept_id"
    if "cdm_source" in tables and "cdm_version" in {c.name.lower() for c in engine.columns("cdm_source")}:
        for value in engine.query("SELECT cdm_version FROM cdm_source").column(0).to_pylist():
            m = re.search(r"(?<![\d.])(5\.[34])(?!\d)", str(value or ""))  # 'v5.3.1', 'CDM v5.4.0', 'OMOP CDM 5.3'
            if m:
                return m[1], f"from cdm_source.cdm_version '{value}'"
    return model.DEFAULT_VERSION, "the default: nothing in the store says"


def init(engine, version: str = model.DEFAULT_VERSION) -> list[str]:
    """Create every table of the CDM version that does not exist yet; return the ones created.

    A store holds one CDM version; initialising it with another one is an error.
    """
    current = info(engine).get("cdm_version")
    if current and current != version:
        raise ValueError(f"this store holds OMOP CDM v{current}; it cannot be initialised as v{version}: give another "
                         f"--store for a v{version} CDM")
    cdm = model.load(version)
    existing = set(engine.tables())
    created = []
    with engine.transaction():
        if INFO_TABLE not in existing:
            engine.create_table(INFO)
        for t in cdm.tables:
            if t.name not in existing:
                engine.create_table(t)
                created.append(t.name)
        if not current:
            engine.load_arrow(INFO_TABLE, pa.table({"key": ["cdm_version"], "value": [version]}))
    return created


@dataclass
class Status:
    url: str
    engine: str
    cdm_version: str | None
    vocabulary_version: str | None
    counts: dict[str, int]
    cdm_version_from: str | None = None  # how the version was found (detect_version)


def status(engine) -> Status:
    """The store's CDM version (a database medlake did not create, but which has a person table: as detected),
    vocabulary version and row counts."""
    tables = set(engine.tables())
    version, found = detect_version(engine) if INFO_TABLE in tables or "person" in tables else (None, None)
    counts: dict[str, int] = {}
    vocab_version = None
    if version:
        names = [t.name for t in model.load(version).tables if t.name in tables]
        if names:
            sql = " UNION ALL ".join(f"SELECT '{n}' AS t, count(*) AS n FROM {n}" for n in names)
            counts = {r["t"]: r["n"] for r in engine.query(sql).to_pylist()}
        if counts.get("vocabulary"):
            v = engine.query("SELECT vocabulary_version FROM vocabulary WHERE vocabulary_id = 'None'")
            vocab_version = v.column(0)[0].as_py() if v.num_rows else None
    return Status(redact(engine.url), engine.name, version, vocab_version, counts, found)
