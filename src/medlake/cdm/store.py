"""A CDM store on any engine: create it from the spec, describe it."""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from medlake.cdm import model

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


def init(engine, version: str = model.DEFAULT_VERSION) -> list[str]:
    """Create every table of the CDM version that does not exist yet; return the ones created.

    A store holds one CDM version; initialising it with another one is an error.
    """
    current = info(engine).get("cdm_version")
    if current and current != version:
        raise ValueError(f"this store holds OMOP CDM v{current}; it cannot be initialised as v{version}")
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


def status(engine) -> Status:
    version = info(engine).get("cdm_version")
    counts: dict[str, int] = {}
    vocab_version = None
    if version:
        tables = set(engine.tables())
        names = [t.name for t in model.load(version).tables if t.name in tables]
        if names:
            sql = " UNION ALL ".join(f"SELECT '{n}' AS t, count(*) AS n FROM {n}" for n in names)
            counts = {r["t"]: r["n"] for r in engine.query(sql).to_pylist()}
        if counts.get("vocabulary"):
            v = engine.query("SELECT vocabulary_version FROM vocabulary WHERE vocabulary_id = 'None'")
            vocab_version = v.column(0)[0].as_py() if v.num_rows else None
    return Status(engine.url, engine.name, version, vocab_version, counts)
