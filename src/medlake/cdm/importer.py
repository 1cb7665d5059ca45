"""`medlake cdm import`: load an existing OMOP CDM from a folder of CSV or Parquet files, one per table.

Files are named after their table (`person.csv`, `PERSON.csv`, `condition_occurrence.parquet`, `.csv.gz`).
Data is streamed in Arrow batches, converted to the CDM types of the spec, and loaded in ONE transaction:
a bad value stops the import with its file, line, field and value, and the store is left as it was.
A table in the folder replaces the store's rows of that table, so importing twice changes nothing.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from medlake.cdm import ddl, model, store
from medlake.cdm.vocab import index_lookups

SUFFIXES = (".csv", ".csv.gz", ".tsv", ".parquet")
BATCH_BYTES = 8 << 20


class CdmImportError(ValueError):
    """A file cannot be imported; the message names the file, line, field and what to do."""


def _table_files(folder: Path, cdm: model.CDM) -> dict[str, Path]:
    if not folder.is_dir():
        raise CdmImportError(f"{folder} is not a folder; give a folder with one CSV or Parquet file per CDM table")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        suffix = next((s for s in SUFFIXES if p.name.lower().endswith(s)), None)
        if suffix is None or not p.is_file():
            continue
        name = p.name[: -len(suffix)].lower()
        if name not in cdm.table_names:
            raise CdmImportError(f"{p}: no table {name!r} in OMOP CDM v{cdm.version}; name each file after its "
                               "table (e.g. person.csv) or move it out of the folder")
        if name in found:
            raise CdmImportError(f"{p}: table {name} also comes from {found[name].name}; keep one file per table")
        found[name] = p
    if not found:
        raise CdmImportError(f"{folder}: no .csv, .csv.gz, .tsv or .parquet files")
    return found


def _csv_batches(path: Path, table: model.Table, delimiter: str) -> Iterator[tuple[pa.RecordBatch, int]]:
    """(batch of strings, number of the file line of its first row)."""
    names = table.field_names
    types = {n: pa.string() for n in names} | {n.upper(): pa.string() for n in names}
    delim = "\t" if path.name.lower().endswith(".tsv") else delimiter
    try:
        reader = pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(block_size=BATCH_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=delim),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                 null_values=[""], quoted_strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as e:
        raise CdmImportError(f"{path}: cannot read as CSV: {str(e).splitlines()[0]}") from e
    line = 2  # after the header
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as e:
            raise CdmImportError(f"{path}: near line {line}: {str(e).splitlines()[0]}") from e
        yield batch, line
        line += batch.num_rows


def _parquet_batches(path: Path) -> Iterator[tuple[pa.RecordBatch, int]]:
    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CdmImportError(f"{path}: cannot read as Parquet: {str(e).splitlines()[0]}") from e
    row = 1
    for batch in f.iter_batches(batch_size=100_000):
        yield batch, row
        row += batch.num_rows


def _parse_one(value, kind: str):
    """Python-side conversion, used only to find the first bad value after a vectorised cast failed."""
    if value is None:
        return None
    s = str(value).strip()
    if kind in ("bigint", "integer"):
        return int(s)
    if kind == "float":
        return float(s)
    if kind == "date":
        return dt.date.fromisoformat(s) if "-" in s else dt.datetime.strptime(s, "%Y%m%d").date()
    if kind == "datetime":
        return dt.datetime.fromisoformat(s)
    return s


def _convert(col: pa.Array, f: model.Field, target: pa.DataType, where: Callable[[int], str]) -> pa.Array:
    if col.type == target:
        return col
    try:
        if f.kind == "date" and pa.types.is_string(col.type):
            s = pc.utf8_trim_whitespace(col)
            compact = pc.match_substring_regex(s, r"^\d{8}$")
            if pc.any(compact).as_py():  # 20200131 as written by some exports
                s = pc.if_else(compact, pc.binary_join_element_wise(
                    pc.utf8_slice_codeunits(s, 0, 4), pc.utf8_slice_codeunits(s, 4, 6),
                    pc.utf8_slice_codeunits(s, 6, 8), "-"), s)
            return pc.cast(pc.cast(s, pa.timestamp("s")), target)
        if f.kind in ("bigint", "integer", "float") and pa.types.is_string(col.type):
            col = pc.utf8_trim_whitespace(col)
        return pc.cast(col, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        for i, v in enumerate(col.to_pylist()):
            try:
                parsed = _parse_one(v, f.kind)
                if f.kind in ("integer",) and parsed is not None and not -2**31 <= parsed < 2**31:
                    raise ValueError("out of range for a 32-bit integer")
            except (ValueError, TypeError) as bad:
                raise CdmImportError(f"{where(i)}: field {f.name}: cannot read {v!r} as {f.kind} ({bad}); "
                                   "fix the value in the file and import again") from e
        raise CdmImportError(f"{where(0)}: field {f.name}: cannot convert to {f.kind}: {str(e).splitlines()[0]}") from e


def _conform(batch: pa.RecordBatch, table: model.Table, schema: pa.Schema, where: Callable[[int], str]) -> pa.Table:
    names = [n.lower().strip() for n in batch.schema.names]
    unknown = [n for n in names if n not in table.field_names]
    if unknown:
        raise CdmImportError(f"{where(-1)}: column(s) {', '.join(unknown)} are not fields of {table.name} "
                           f"(fields: {', '.join(table.field_names)})")
    data = dict(zip(names, batch.columns))
    cols = []
    for f, af in zip(table.fields, schema):
        if f.name in data:
            col = _convert(data[f.name], f, af.type, where)
        else:
            col = pa.nulls(batch.num_rows, af.type)
        if f.required and col.null_count:
            i = pc.index(col.is_null(), True).as_py()
            raise CdmImportError(f"{where(i)}: field {f.name} is required in {table.name} but empty")
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def import_folder(engine, folder: str | Path, version: str = model.DEFAULT_VERSION, *, delimiter: str = ",",
                  progress: Callable[[str, int, int], None] | None = None) -> dict[str, tuple[Path, int]]:
    """Load every table file of `folder` into the store; return {table: (file, rows)}."""
    cdm = model.load(version)
    files = _table_files(Path(folder), cdm)
    store.init(engine, version)
    report: dict[str, tuple[Path, int]] = {}
    with engine.transaction():
        for n, (name, path) in enumerate(files.items()):
            if progress:
                progress(name, n, len(files))
            table = cdm.table(name)
            schema = ddl.arrow_schema(table)
            parquet = path.name.lower().endswith(".parquet")
            batches = _parquet_batches(path) if parquet else _csv_batches(path, table, delimiter)
            if engine.query(f'SELECT count(*) AS n FROM "{name}"').column(0)[0].as_py():
                engine.execute(f'DELETE FROM "{name}"')  # the file replaces the table: importing twice is a no-op
            rows = 0
            for batch, first in batches:
                def where(i: int, first=first) -> str:
                    if i < 0:
                        return str(path)
                    return f"{path}: row {first + i}" if parquet else f"{path}:{first + i}"

                rows += engine.load_arrow(name, _conform(batch, table, schema, where))
            report[name] = (path, rows)
        if progress:
            progress("done", len(files), len(files))
    index_lookups(engine, list(files))
    return report
