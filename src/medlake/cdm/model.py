"""The OMOP CDM as data: tables and fields read from the official spec CSVs.

Nothing here is hand-written per table. A spec change is a data change.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

VERSIONS = ("5.4", "5.3")
DEFAULT_VERSION = "5.4"


@dataclass(frozen=True)
class Field:
    table: str
    name: str
    required: bool
    datatype: str  # as written in the spec, lower-cased: integer, bigint, float, date, datetime, varchar(n)
    primary_key: bool
    fk_table: str | None
    fk_field: str | None
    fk_domain: str | None
    fk_class: str | None

    @property
    def kind(self) -> str:
        """Logical type: bigint, integer, float, date, datetime or varchar."""
        t = self.datatype
        if t.startswith("varchar"):
            return "varchar"
        if t == "integer":
            # Identifiers are 64-bit; concept ids and counts stay 32-bit as in OHDSI's DDL.
            if "concept_id" not in self.name and re.search(r"_id(_\d)?$", self.name):
                return "bigint"
            return "integer"
        return t

    @property
    def length(self) -> int | None:
        m = re.fullmatch(r"varchar\((\d+)\)", self.datatype)
        return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Table:
    name: str
    schema: str  # CDM, VOCAB or RESULTS
    required: bool
    fields: tuple[Field, ...]

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def primary_key(self) -> list[str]:
        return [f.name for f in self.fields if f.primary_key]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")


@dataclass(frozen=True)
class CDM:
    version: str
    tables: tuple[Table, ...]

    def table(self, name: str) -> Table:
        for t in self.tables:
            if t.name == name.lower():
                return t
        raise KeyError(f"OMOP CDM v{self.version} has no table {name!r}")

    @property
    def table_names(self) -> list[str]:
        return [t.name for t in self.tables]

    def by_schema(self, schema: str) -> list[Table]:
        return [t for t in self.tables if t.schema == schema]

    @property
    def field_count(self) -> int:
        return sum(len(t.fields) for t in self.tables)


def _na(v: str) -> str | None:
    v = (v or "").strip()
    return None if v in ("", "NA") else v


def spec_rows(version: str, level: str) -> list[dict[str, str]]:
    """Rows of OMOP_CDMv<version>_<level>.csv (level: Field_Level or Table_Level)."""
    if version not in VERSIONS:
        raise ValueError(f"unknown OMOP CDM version {version!r}; supported: {', '.join(VERSIONS)}")
    name = f"OMOP_CDMv{version}_{level}.csv"
    text = resources.files("medlake.cdm").joinpath("spec").joinpath(name).read_text(encoding="utf-8-sig")
    return list(csv.DictReader(text.splitlines(keepends=True)))


@cache
def load(version: str = DEFAULT_VERSION) -> CDM:
    """The CDM of one version, in spec order."""
    fields: dict[str, list[Field]] = {}
    for r in spec_rows(version, "Field_Level"):
        table = r["cdmTableName"].strip().lower()
        name = r["cdmFieldName"].strip().strip('"').lower()
        fields.setdefault(table, []).append(
            Field(
                table=table,
                name=name,
                required=r["isRequired"].strip() == "Yes",
                datatype=r["cdmDatatype"].strip().lower(),
                primary_key=r["isPrimaryKey"].strip() == "Yes",
                fk_table=(_na(r["fkTableName"]) or "").lower() or None,
                fk_field=(_na(r["fkFieldName"]) or "").lower() or None,
                fk_domain=_na(r["fkDomain"]),
                fk_class=_na(r["fkClass"]),
            )
        )
    tables = []
    for r in spec_rows(version, "Table_Level"):
        name = r["cdmTableName"].strip().lower()
        tables.append(
            Table(
                name=name,
                schema=r["schema"].strip().upper(),
                required=r["isRequired"].strip() == "Yes",
                fields=tuple(fields.pop(name)),
            )
        )
    if fields:
        raise ValueError(f"fields for tables missing from the table-level spec: {sorted(fields)}")
    return CDM(version=version, tables=tuple(tables))
