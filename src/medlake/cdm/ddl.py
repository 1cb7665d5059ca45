"""DDL and Arrow schemas generated from the CDM model, never hand-written."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from medlake.cdm.model import Field, Table

# Logical kind -> SQL type, written once in DuckDB's dialect. Engines override a few (see engines/*).
SQL_TYPES = {
    "bigint": "BIGINT",
    "integer": "INTEGER",
    "float": "DOUBLE",
    "date": "DATE",
    "datetime": "TIMESTAMP",
    "varchar": "VARCHAR",
}

ARROW_TYPES = {
    "bigint": pa.int64(),
    "integer": pa.int32(),
    "float": pa.float64(),
    "date": pa.date32(),
    "datetime": pa.timestamp("us"),
    "varchar": pa.string(),
}


def without_nul(a: pa.Array) -> pa.Array:
    """Text without NUL characters: PostgreSQL cannot store one (the whole load failed), and they mean nothing in a
    value (a field padded with NUL bytes); the file as received keeps them. The same on every engine."""
    if not pa.types.is_string(a.type) or len(a) == 0 or a.buffers()[2] is None:
        return a
    offsets = np.frombuffer(a.buffers()[1], np.int32, count=len(a) + 1, offset=a.offset * 4)
    lo, hi = int(offsets[0]), int(offsets[-1])  # the text of this array (or slice) in its data buffer
    if np.frombuffer(a.buffers()[2], np.uint8, count=hi - lo, offset=lo).all():  # no zero byte: at memory speed
        return a
    return pc.replace_substring(a, "\x00", "")


def sql_type(field: Field, overrides: dict[str, str] | None = None, keep_length: bool = False) -> exp.DataType:
    name = (overrides or {}).get(field.kind, SQL_TYPES[field.kind])
    if keep_length and field.kind == "varchar" and field.length:
        name = f"{name}({field.length})"
    return exp.DataType.build(name)


def create_table(
    table: Table,
    *,
    name: str | None = None,
    overrides: dict[str, str] | None = None,
    keep_length: bool = False,
    not_null: bool = True,
) -> exp.Create:
    """A CREATE TABLE IF NOT EXISTS expression for a CDM table; render it with `.sql(dialect)`."""
    cols = []
    for f in table.fields:
        constraints = [exp.ColumnConstraint(kind=exp.NotNullColumnConstraint())] if (f.required and not_null) else []
        cols.append(
            exp.ColumnDef(
                this=exp.to_identifier(f.name, quoted=True),
                kind=sql_type(f, overrides, keep_length),
                constraints=constraints,
            )
        )
    return exp.Create(
        this=exp.Schema(this=exp.to_table(name or table.name), expressions=cols),
        kind="TABLE",
        exists=True,
    )


def arrow_schema(table: Table) -> pa.Schema:
    return pa.schema([pa.field(f.name, ARROW_TYPES[f.kind], nullable=not f.required) for f in table.fields])


def arrow_table(table: Table, columns: dict[str, list]) -> pa.Table:
    """An Arrow table of some of a CDM table's columns, typed as the spec says (for loads and tests)."""
    return pa.table({name: pa.array(values, ARROW_TYPES[table.field(name).kind]) for name, values in columns.items()})
