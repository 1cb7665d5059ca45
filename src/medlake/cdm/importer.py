"""`medlake cdm import`: load an existing OMOP CDM from a folder of CSV or Parquet files, one per table.

Files are named after their table (`person.csv`, `PERSON.csv`, `condition_occurrence.parquet`, `.csv.gz`), or a
table is a folder of part files (`measurement/part-00000.parquet`, as Spark writes it), also in Hive partition folders
(`measurement/measurement_type_concept_id=32856/part-….parquet`, Spark's `partitionBy`: the value in the folder's name
is the rows' value of that field, or, of a column that is no CDM field, left out and counted). A table's folder without
data files (Spark's empty table: none, or only `_SUCCESS` and `.crc`) is the table without rows. A Delta table (a
folder with `_delta_log/`) is refused: which of its part files are current only its log says.
Data is streamed in Arrow batches, converted to the CDM types of the spec, and loaded in ONE transaction.
A row that cannot be imported (a value not of its field's type, an empty required field, a CSV line with the
wrong number of fields) is set aside with its file, line, field and what to do, and handed to `set_aside` before the
transaction commits (the CLI files them in quarantine); the other rows load. `strict` stops at the first such row
instead. A file that cannot be read as a table (unknown name or columns, not CSV/Parquet), or more bad rows than
`max_bad`, stops the import and leaves the store as it was.
A table in the folder replaces the store's rows of that table, so importing twice changes nothing.
"""
from __future__ import annotations

import codecs
import csv
import decimal
import datetime as dt
import io
import json
import math
import re
from pathlib import Path
from typing import Callable, Iterator, NamedTuple
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from medlake.cdm import ddl, model, store
from medlake.cdm.vocab import VOCAB_FILES, VocabError, index_lookups, read_batches, undecodable_lines

SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".tsv", ".tsv.gz", ".tsv.bz2", ".tsv.zst", ".parquet")
CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}  # compressed files are read as they come, named in any case
KINDS = ".csv (any --delimiter), .tsv, .parquet, or .csv/.tsv compressed as .gz, .bz2 or .zst"
BATCH_BYTES = 8 << 20


MAX_BAD = 1000  # more bad rows than this in one import: the files are not what the import expects


class CdmImportError(ValueError):
    """A file cannot be imported; the message names the file, line, field and what to do."""


class UnknownColumns(CdmImportError):
    def __init__(self, message: str, columns: list[str]):
        super().__init__(message)
        self.columns = columns


class MissingColumns(CdmImportError):
    def __init__(self, message: str, columns: list[str], present: list[str]):
        super().__init__(message)
        self.columns, self.present = columns, present


IMPORTED = "cdm_imported_from"  # medlake_info: the folder a store's CDM was imported from (`medlake cdm import`)


def other_version(version: str) -> str:
    """The other CDM version medlake reads (5.3 for 5.4)."""
    return next(v for v in model.VERSIONS if v != version)


class BadRow(NamedTuple):
    """A row left out of the import: where (file, CSV line or Parquet row, field), why, and the row as read."""
    table: str
    path: Path
    line: int | None  # the file line (CSV: the header is line 1) or the Parquet row (1-based)
    field: str | None
    reason: str  # invalid (a value not of the field's type), missing_mandatory, malformed (a CSV line)
    detail: str  # what is wrong and what to do, one line
    raw: bytes

    @property
    def where(self) -> str:
        return _at(self.path, self.line)


def _at(path: Path, line: int | None) -> str:
    """Where a row is: `file:line` for CSV, `file: row N` for Parquet."""
    if path.name.lower().endswith(".parquet"):
        return f"{path}: row {line}"
    return f"{path}:{line or '?'}"


class Imported(NamedTuple):
    path: Path
    rows: int  # loaded
    bad: int  # left out (BadRow)
    # {(field, what): (values, where the first is)}; what: "cut" (longer than the spec's length: cut to it),
    # "null_text" (NULL or \N kept as text in a text field: --null not given), "skipped" (a column that is no field
    # of the table, left out: skip_unknown; values: its non-empty values), "nul" (a text that held a NUL character,
    # left out of it: no engine but DuckDB can store one), "swallowed" (rows of the file inside a value whose quote
    # is not closed, set aside with its row; values: those rows), "quoted_empty" ("" in a text field of a file whose
    # header is quoted: QUOTE_ALL writes NULL so); ("", "stray_quote"): lines where a quoted value holds a quote
    # that is not doubled (`"a"b`: read as `ab`; values: lines)
    notes: dict[tuple[str, str], tuple[int, str]] = {}


QUARANTINE_PREFIX = "cdm:"


def quarantine_source(table: str) -> str:
    """The quarantine source of a CDM import's bad rows of `table` (`medlake quarantine list --source`)."""
    return QUARANTINE_PREFIX + table


def _suffix(p: Path) -> str | None:
    return next((s for s in SUFFIXES if p.name.lower().endswith(s)), None)


PARTITION = re.compile(r"([^=]+)=(.*)")  # a Hive partition folder: `measurement_type_concept_id=32856`
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # the partition folder of an empty value (Hive, Spark)


def _hidden(p: Path) -> bool:
    """`_SUCCESS`, `_delta_log`, `_temporary`, `.crc` and other hidden files and folders: no part of a table's data."""
    return p.name.startswith((".", "_"))


def _parts(path: Path) -> list[Path]:
    """The data files of a table: the file, or the part files of a table's folder as Spark and other engines write
    it (`measurement/part-00000-….parquet`, `measurement.parquet/…`; `_SUCCESS`, `.crc` and hidden files aside), in
    its Hive partition folders too (`measurement/measurement_type_concept_id=32856/part-….parquet`, any depth). A
    sub-folder holding data files that is no partition folder is refused (its files would be left out)."""
    if not path.is_dir():
        return [path]
    found = []
    for p in sorted(path.iterdir()):
        if _hidden(p):
            continue
        if p.is_file():
            if _suffix(p):
                found.append(p)
        elif p.is_dir():
            inside = _parts(p)
            if inside and not PARTITION.fullmatch(p.name):
                raise CdmImportError(f"{p}: a sub-folder of data files that is no Hive partition folder (column=value);"
                                     " move its files into the table's folder, or the folder out of it, and import "
                                     "again")
            found += inside
    return found


def _partition(folder: Path, part: Path) -> dict[str, str | None]:
    """{column: value} of a part file's Hive partition folders below its table's `folder` (the value as the folder
    name escapes it, decoded; None for the empty value's folder)."""
    if part == folder:
        return {}
    values: dict[str, str | None] = {}
    for name in part.parent.relative_to(folder).parts:
        key, value = PARTITION.fullmatch(name).groups()
        values[unquote(key)] = None if value == HIVE_NULL else unquote(value)
    return values


def _delta(p: Path) -> None:
    """Refuse a Delta table: its folder keeps the part files its log removed (until VACUUM), so they cannot be read as
    the table without reading the log."""
    if p.is_dir() and (p / "_delta_log").is_dir():
        raise CdmImportError(f"{p}: a Delta table (_delta_log/): which of its part files are current only its log "
                             "says, and medlake does not read it; export the table as Parquet (in Spark: "
                             "spark.read.format('delta').load(...).write.parquet(...)) or give a snapshot folder, and "
                             "import that")


def _table_name(p: Path) -> str | None:
    """The table (lower case) a data file, or a folder of part files, is named after; None for anything else
    (hidden files, `_SUCCESS`, other kinds of file). A folder is named so with or without data files in it (Spark's
    empty table)."""
    if _hidden(p):
        return None
    if p.is_dir():
        return (p.name[: -len(".parquet")] if p.name.lower().endswith(".parquet") else p.name).lower()
    suffix = _suffix(p)
    return p.name[: -len(suffix)].lower() if suffix else None


def switch_to(other: str, held: str | None) -> str:
    """What to do with files of CDM version `other`: name it, or, where the store already holds a version
    (`held`, its record: `medlake init` makes v5.4), import them into another store."""
    if held:
        return (f"this store holds v{held}: v{other} files go into a v{other} store (a new --store: the import makes "
                "it of the files' version)")
    return f"give --version {other} if the files are v{other}"


def _table_files(folder: Path, cdm: model.CDM, held: str | None = None) -> dict[str, Path]:
    """{table: its file or folder of part files} in `folder` (`held`: the version the store holds, if it says)."""
    if not folder.is_dir():
        raise CdmImportError(f"{folder} is not a folder; give a folder with one CSV or Parquet file per CDM table")
    _delta(folder)  # (the folder of one Delta table given as DIR)
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        name = _table_name(p)
        if name is None:
            if p.is_file() and p.name.split(".")[0].lower() in cdm.table_names:  # person.txt, person.csv.zip
                raise CdmImportError(f"{p}: not a kind of file the import reads ({KINDS}); convert or rename it, or "
                                     "move it out of the folder")
            continue
        _delta(p)
        try:
            parts = _parts(p)
        except CdmImportError:
            if name in cdm.table_names:
                raise
            continue  # folders of folders, named after no table (a warehouse's database folder): not a table
        if not parts and name not in cdm.table_names:
            continue  # no data, and no table of this version to empty (docs/, v5.4's episode/ in a v5.3 import)
        if p.is_dir() and len({_suffix(x) == ".parquet" for x in parts}) > 1:
            raise CdmImportError(f"{p}: holds both CSV and Parquet files; keep one kind per table")
        if name not in cdm.table_names:
            other = other_version(cdm.version)
            if name in model.load(other).table_names and model.load(other).table(name).schema == "RESULTS":
                raise CdmImportError(f"{p}: {name} is a results table of OMOP CDM v{other}, which v{cdm.version} has "
                                     "not: move it out of the folder (a quality run reads a cohort from a table of "
                                     "any name: --cohort-table)")
            if name in model.load(other).table_names:
                raise CdmImportError(f"{p}: {name} is a table of OMOP CDM v{other}, not v{cdm.version}: "
                                     f"{switch_to(other, held)}, or move it out of the folder")
            raise CdmImportError(f"{p}: no table {name!r} in OMOP CDM v{cdm.version}; name each file (or folder of "
                                 "part files) after its table (e.g. person.csv) or move it out of the folder")
        if name in found:
            raise CdmImportError(f"{p}: table {name} also comes from {found[name].name}; keep one file per table")
        found[name] = p
    if not found:
        raise CdmImportError(f"{folder}: no table files ({KINDS}, named after their table)")
    return found


class CsvFormat(NamedTuple):
    """How the CSV files are written: `delimiter` (a .tsv file's is a tab), `encoding`, the texts that mean empty."""
    delimiter: str = ","
    encoding: str = "utf-8"
    nulls: tuple[str, ...] = ("",)
    decimal: str = "."  # the decimal mark of numbers with a fraction
    dates: str | None = None  # the form of dates besides YYYY-MM-DD, as strptime writes it (%m/%d/%Y)
    quoted: bool = False  # a file's header is quoted, every name (found by `_sniff`): QUOTE_ALL writes NULL as ""

    def of(self, path: Path) -> str:
        """The delimiter of file `path`."""
        return "\t" if _suffix(path).startswith(".tsv") else self.delimiter


def _has_breaks(col: pa.Array) -> bool:
    """Whether a column of text or bytes holds a line break (one pass over its bytes)."""
    data = col.buffers()[2] if len(col) and col.type in (pa.string(), pa.binary()) else None
    if data is None:
        return False
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32, count=len(col) + 1, offset=4 * col.offset)
    return bool(np.count_nonzero(np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]] == 10))


def _breaks(batch: pa.RecordBatch) -> np.ndarray | None:
    """Per row, the line breaks inside the quoted values of the batch's rows before it (a note's text written over
    several lines), with the batch's total last; None when its values have none (the usual case, found in one pass
    over their bytes)."""
    per_row = None
    for col in batch.columns:
        if not _has_breaks(col):
            continue
        n = pc.fill_null(pc.count_substring(col, "\n"), 0).to_numpy(zero_copy_only=False)
        per_row = n if per_row is None else per_row + n
    return None if per_row is None else np.concatenate(([0], np.cumsum(per_row)))


def _stream(path: Path):
    """The file's bytes, decompressed as its name says in any case (Arrow's own detection misses death.csv.GZ)."""
    return pa.input_stream(str(path), compression=CODECS.get(Path(path).suffix.lower()))


def _text(path: Path, encoding: str) -> io.TextIOWrapper:
    """The file as text (decompressed as its name says)."""
    return io.TextIOWrapper(_stream(path), encoding=encoding, errors="replace",
                            newline="")


def _sniff(path: Path, fmt: CsvFormat) -> tuple[CsvFormat, list[str], int]:
    """The file's format, its header's fields and the blank lines before the header (SQL*Plus SPOOL and
    `echo > f; bcp ... >> f` write one; skipped, the file's lines still counted as it has them): with the delimiter
    given, or, when the header does not split by it, the one it splits by (a ';' export in a folder of
    comma-separated tables). A file of blank lines alone has no header (an empty table)."""
    blank = 0
    if fmt.encoding.lower().replace("-", "").replace("_", "") not in ("utf8", "utf8sig"):
        with _stream(path) as raw:  # a UTF-8 byte-order mark: the file is UTF-8, whatever --encoding says of the
            if raw.read(3) == codecs.BOM_UTF8:  # folder's others (cp1252 read it as ï»¿ in the first column's name)
                fmt = fmt._replace(encoding="utf-8")
    try:
        with _text(path, fmt.encoding) as fh:
            first = fh.readline().lstrip("\ufeff")
            while first and not first.strip():
                blank, first = blank + 1, fh.readline().lstrip("\ufeff")  # (a BOM after them: `echo >> f`)
    except (OSError, pa.ArrowInvalid) as e:
        raise CdmImportError(f"{path}: cannot read as CSV: {str(e).splitlines()[0]}") from e
    if "\ufffd" in first:  # (read with errors="replace")
        with _stream(path) as raw:
            bom = raw.read(4)
        if bom[:2] in (b"\xff\xfe", b"\xfe\xff"):  # as a spreadsheet saves "Unicode text"
            raise CdmImportError(f"{path}: its byte-order mark says UTF-16: give --encoding utf-16 (and --delimiter "
                                 "'\\t' for a spreadsheet's Unicode text) and import again")
        line = first.strip()
        at = line.index("\ufffd")  # shown around its first character not read
        shown = "…" * (at > 60) + repr(line[max(0, at - 60):at + 20]) + "…" * (len(line) > at + 20)
        raise CdmImportError(f"{path}: its header is not in {fmt.encoding} ({shown}): give the file's encoding with "
                             "--encoding (e.g. cp1252, latin-1), or fix the header, and import again")
    given = fmt.of(path)
    for d in (given, *(d for d in (",", ";", "|", "\t") if d != given)):
        header = next(csv.reader([first], delimiter=d), [])
        if len(header) > 1:
            fmt = fmt if d == given else fmt._replace(delimiter=d)
            break
    else:
        header = next(csv.reader([first], delimiter=given), [])
    return fmt._replace(quoted=bool(header) and first.count('"') == 2 * len(header)), header, blank


def _csv_batches(path: Path, fmt: CsvFormat, header: list[str], invalid: list[tuple[str, int, int]] | None = None,
                 blank: int = 0, emptied: list[int] | None = None) -> Iterator[tuple[pa.RecordBatch, Callable]]:
    """(batch of bytes, as in the file but for its encoding read as UTF-8; the file line of its row i as `line(i)`),
    of a file of this format and `header`, after `blank` lines (`_sniff`). `invalid`: lines with the wrong number of fields are appended
    to it (text, fields expected, fields found) and skipped (the line numbers of later rows are then fixed by
    `_invalid_lines`); without it they stop the import. Rows without a value in any field (a blank line, which the
    reader keeps so that the lines after it are counted, or a line of delimiters alone: `_delimiters_only`) are
    left out, their count appended to `emptied`."""
    delimiter = fmt.of(path)
    if not header or header == [""]:  # an empty file (as some exports write an empty table): no rows
        return
    types = {n: pa.binary() for n in header}  # every column as written: no guessing

    def skip(row) -> str:
        invalid.append((row.text, row.expected_columns, row.actual_columns))
        return "skip"

    try:
        with _row_text(path):
            reader = pacsv.open_csv(
                _stream(path), read_options=pacsv.ReadOptions(block_size=BATCH_BYTES, encoding=fmt.encoding,
                                                              skip_rows=blank),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, ignore_empty_lines=False,
                                                 invalid_row_handler=skip if invalid is not None else None),
                convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                     null_values=list(fmt.nulls), quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError) as e:
        raise CdmImportError(f"{path}: cannot read as CSV: {str(e).splitlines()[0]}") from e
    line = 2 + blank  # after the header
    while True:
        try:
            with _row_text(path):
                batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as e:
            if "straddl" in str(e):  # pyarrow: "straddling object straddles two block boundaries"
                raise CdmImportError(f"{_at(path, line)}: the row runs on for more than {BATCH_BYTES >> 20} MB (a "
                                     "quote that is not closed?): fix the quoting there and import again") from e
            raise CdmImportError(f"{path}: near line {line}: {str(e).splitlines()[0]}") from e
        breaks = _breaks(batch)
        at = (lambda i, first=line: first + i) if breaks is None else (
            lambda i, first=line, breaks=breaks: first + i + int(breaks[i]))
        line += batch.num_rows + (0 if breaks is None else int(breaks[-1]))
        valued = _valued(batch)
        if valued is not None:
            if emptied is not None:
                emptied.append(batch.num_rows - len(valued))
            batch, at = batch.take(valued), (lambda i, at=at, valued=valued: at(int(valued[i])))
        yield batch, at


def _valued(batch: pa.RecordBatch) -> np.ndarray | None:
    """The indices of the rows with a value in some field; None when every row has one (the usual case)."""
    empty = None
    for col in batch.columns:
        if not col.null_count:
            return None
        empty = col.is_null() if empty is None else pc.and_(empty, col.is_null())
    if empty is None or not pc.any(empty).as_py():
        return None
    return pc.indices_nonzero(pc.invert(empty)).to_numpy()


def _delimiters_only(path: Path, fmt: CsvFormat, columns: int) -> list[int]:
    """The file lines of delimiters alone (`,,,,`: a row of no value, not a blank line), found by their text."""
    if columns < 2:
        return []
    with _text(path, fmt.encoding) as fh:
        return [n for n, line in enumerate(fh, 1) if line.rstrip("\r\n") == fmt.of(path) * (columns - 1)]


def _stray_quotes(path: Path, fmt: CsvFormat) -> list[int]:
    """The file lines where a quoted value holds a quote that is not doubled (`"a"b`, MySQL's `"5\\" tube"`): the
    reader goes on past it (`"a"b` reads `ab`), so each is counted in a warning. Found in the bytes (a quote with
    something other than a delimiter, a line break or a quote on both sides; most files have none), then each such
    line read by Python's csv, strictly: a quote inside a value that is not quoted (`5" tube`) is kept as written,
    not counted. A line inside a value written over several lines is read alone: rarely, one more is counted."""
    if not fmt.encoding.lower().replace("-", "").replace("_", "").startswith(("utf8", "latin", "cp", "iso8859",
                                                                               "ascii", "windows")):
        return []  # (UTF-16 and such: a quote is not the byte 0x22)
    ok = np.zeros(256, dtype=bool)  # the bytes a quote may stand beside
    ok[list(b'"\n\r' + fmt.of(path).encode())] = True
    found, lines, tail = [], 1, b""
    with _stream(path) as raw:
        while True:
            chunk = raw.read(BATCH_BYTES)
            data = tail + chunk
            if not data:
                break
            b = np.frombuffer(data, dtype=np.uint8)
            breaks = np.flatnonzero(b == 10)
            end = (int(breaks[-1]) + 1 if len(breaks) else 0) if chunk else len(b)  # whole lines (the rest: next)
            quotes = np.flatnonzero(b[:end] == 34)
            quotes = quotes[(quotes > 0) & (quotes < len(b) - 1)]  # (data begins a line; the file's last byte)
            odd = quotes[~(ok[b[quotes - 1]] | ok[b[quotes + 1]])]
            found += [lines + int(n) for n in np.searchsorted(breaks, odd)]
            if not chunk:
                break
            lines, tail = lines + len(breaks), data[end:]
    if not found:
        return []
    wanted, strict = set(found), []
    with _text(path, fmt.encoding) as fh:
        for n, line in enumerate(fh, 1):
            if n in wanted:
                try:
                    list(csv.reader([line], delimiter=fmt.of(path), strict=True))
                except csv.Error:
                    strict.append(n)
    return strict


def _athena(path: Path, fmt: CsvFormat, table: model.Table, blank: int) -> bool:
    """Whether a file is a vocabulary table as Athena writes it: tab-separated, never quoted (a `"` is part of a
    name), its header unquoted, dates as YYYYMMDD (those of its first row), UTF-8, not compressed. Such a file is read
    as `medlake vocab load` reads it; a CDM database's export of the table (dates as YYYY-MM-DD, values quoted) is
    read as CSV."""
    if (table.name not in VOCAB_FILES or fmt.of(path) != "\t" or blank or path.suffix.lower() in CODECS
            or codecs.lookup(fmt.encoding).name != "utf-8"):
        return False
    with open(path, "rb") as fh:
        head, row = fh.readline(), fh.readline()
    if b'"' in head:
        return False
    names = _columns(head.decode("utf-8-sig", "replace").rstrip("\r\n").split("\t"), table.name)
    values = dict(zip(names, row.decode("utf-8", "replace").rstrip("\r\n").split("\t")))
    return all(re.fullmatch(r"\d{8}", values[f.name]) for f in table.fields
               if f.kind in ("date", "datetime") and values.get(f.name))


def _vocab_batches(path: Path, table: model.Table) -> Iterator[tuple[pa.RecordBatch, Callable]]:
    """The batches of an Athena vocabulary file (`_athena`), read and typed by `medlake vocab load`'s reader (a value
    it cannot read stops the import, naming its line and field)."""
    try:
        for first, part in read_batches(path, table):
            for batch in part.combine_chunks().to_batches():
                yield batch, lambda i, first=first: first + i
                first += batch.num_rows
    except VocabError as e:
        raise CdmImportError(f"{path}: {str(e).removeprefix(path.name + ': ')} (read as Athena writes its vocabulary "
                             "files: tab-separated, unquoted, dates as YYYYMMDD)") from None


def _row_text(path: Path):
    """A line with the wrong number of fields that is not UTF-8 (pyarrow fails on it): said in one line."""
    return undecodable_lines(lambda e: CdmImportError(
        f"{path}: a line with the wrong number of fields holds bytes that are not UTF-8 ({str(e).splitlines()[0]}); "
        "give the file's encoding with --encoding (e.g. cp1252, latin-1), or fix that line, and import again"))


def _parquet_batches(path: Path) -> Iterator[tuple[pa.RecordBatch, Callable]]:
    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CdmImportError(f"{path}: cannot read as Parquet: {str(e).splitlines()[0]}") from e
    row = 1
    for group in range(f.num_row_groups):
        batches = f.iter_batches(batch_size=100_000, row_groups=[group])
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError) as e:  # a damaged page (Corrupt snappy compressed data.)
                raise CdmImportError(f"{path}: cannot read row group {group + 1} as Parquet ({str(e).splitlines()[0]})"
                                     ": the file is damaged; export it again and import again") from e
            yield batch, lambda i, first=row: first + i
            row += batch.num_rows


def _why(value, kind: str, dates: str | None = None) -> str:
    """Why the conversion refuses `value`, in words (Python's reading of it; the vectorised cast's error is terse)."""
    s = str(value).strip()
    if dates and kind in ("date", "datetime"):
        return f"a date is read as {dates} (--date-format) or YYYY-MM-DD, a time after it as HH:MM[:SS] [AM/PM]"
    try:
        if kind in ("bigint", "integer"):
            if re.fullmatch(SPREADSHEET, s):
                return ("a long number as a spreadsheet shows it, six digits kept: the others are lost; export the "
                        "column with all its digits")
            if re.fullmatch(r"[-+]?\d*\.\d+", s) or re.fullmatch(EXPONENT, s):
                d = decimal.Decimal(s)
                if d.adjusted() >= 19:
                    return "out of range for a 64-bit integer"
                if d != d.to_integral_value():
                    return "not a whole number"
                s = str(int(d))
            n = int(s)
            if kind == "integer" and not -2**31 <= n < 2**31:
                return "out of range for a 32-bit integer"
            if not -2**63 <= n < 2**63:
                return "out of range for a 64-bit integer"
        elif kind == "float":
            if s.lower().startswith(("0x", "+0x", "-0x")) or not math.isfinite(float(s)):
                return "not a finite decimal number (NaN, infinite, or too large for a double)"
        elif kind == "date":
            if not re.fullmatch(r"\d{4}-\d\d-\d\d([T ].*)?|\d{8}", s):
                return "a date is read as YYYY-MM-DD or YYYYMMDD"
            dt.datetime.fromisoformat(s) if "-" in s else dt.datetime.strptime(s, "%Y%m%d")  # (with a time too)
        elif kind == "datetime":
            dt.datetime.fromisoformat(s)
    except ValueError as e:
        return str(e)
    return "not a value of this type"


# A time's zone, as some exports write it (2020-01-31T10:00:00Z, +02:00, -0500): dropped, the time as written kept
# (the CDM's datetimes have no zone, and the date beside them is the day as written).
ZONE = r"^(.*[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?)(?:Z|[+-]\d\d(?::?\d\d)?)$"


TIMES = ("", " %H:%M", " %H:%M:%S", " %I:%M %p", " %I:%M:%S %p")  # a time after a --date-format date, as written


def _dates(s: pa.Array, form: str) -> pa.Array:
    """Texts of dates written in `form` (--date-format), with a time after them or not, as timestamps; the others are
    read as YYYY-MM-DD (raising where one cannot be read either way)."""
    got = pc.coalesce(*(pc.strptime(s, form + t, "us", error_is_null=True) for t in TIMES))
    # strptime's %Y takes 1 to 4 digits: a spreadsheet's 9/3/22 is no date of the year 22 (and %y is refused)
    got = pc.if_else(pc.fill_null(pc.less(pc.year(got), 100), False), pa.scalar(None, got.type), got)
    rest = pc.and_(pc.is_null(got), pc.is_valid(s))
    if pc.any(rest).as_py():
        got = pc.coalesce(got, pc.cast(pc.if_else(rest, s, pa.scalar(None, pa.string())), pa.timestamp("us")))
    return got


def _cast(col: pa.Array, f: model.Field, target: pa.DataType, dates: str | None = None) -> pa.Array:
    """The field's column as the spec's type (raises ArrowInvalid where a value cannot be read so); `dates`: the
    form of dates besides YYYY-MM-DD (--date-format)."""
    if col.type == target:
        return col
    if pa.types.is_timestamp(col.type) and col.type.tz:  # the time as the clock read there, as a CSV file's
        col = pc.local_timestamp(col)                      # (the cast would give UTC's; its date, the local one)
    if pa.types.is_timestamp(col.type) and col.type.unit == "ns":  # pandas' unit: cut to the microsecond the CDM
        col = pc.cast(pc.floor_temporal(col, unit="microsecond"), pa.timestamp("us"))  # holds, as CSV's 7 digits
    if f.kind in ("date", "datetime") and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        col = pc.cast(pc.cast(col, pa.int64()), pa.string())  # a number is a day as YYYYMMDD, as in a CSV file
    if f.kind in ("date", "datetime") and pa.types.is_string(col.type):
        s = pc.replace_substring_regex(pc.utf8_trim_whitespace(col), ZONE, r"\1")
        compact = pc.match_substring_regex(s, r"^\d{8}$")
        if pc.any(compact).as_py():  # 20200131 as written by some exports
            s = pc.if_else(compact, pc.binary_join_element_wise(
                pc.utf8_slice_codeunits(s, 0, 4), pc.utf8_slice_codeunits(s, 4, 6),
                pc.utf8_slice_codeunits(s, 6, 8), "-"), s)
        if dates:
            s = _dates(s, dates)
        at = target if f.kind == "datetime" else pa.timestamp("us")  # (a time after a day read: SQL Server's .000)
        try:
            t = pc.cast(s, at)
        except CAST_ERRORS:  # SQL Server's datetime2 writes 7 digits after the second (.1234567): to the microsecond
            t = pc.cast(pc.replace_substring_regex(s, r"(:\d\d\.\d{6})\d+$", r"\1"), at)
        if pc.any(pc.less(pc.year(t), 1)).as_py():  # Arrow reads 0000-01-01 as 1 BC, as 10000 it reads nothing:
            raise pa.ArrowInvalid("a year before 1")  # a day before 0001-01-01 no R, Python or SQL Server holds
        return t if f.kind == "datetime" else pc.cast(t, target)
    if f.kind == "float" and (pa.types.is_decimal(col.type) or col.type in (pa.float16(), pa.float32())):
        col = pc.cast(col, pa.string())  # 49.3000, a float32 98.6: the double nearest 49.3 and 98.6, as their text
        # reads (a float32's own value, 98.5999984741211, would cross a range's 98.6 both ways)
    if f.kind in ("bigint", "integer", "float") and pa.types.is_string(col.type):
        col = pc.utf8_trim_whitespace(col)
        if pc.any(pc.match_substring_regex(col, r"^[-+]?0[xX]")).as_py():  # (Arrow reads 0x7a8 as 1960)
            raise pa.ArrowInvalid("a hexadecimal number")
        if f.kind != "float":
            try:
                return pc.cast(col, target)
            except CAST_ERRORS:  # 12.0: pandas writes an integer column with empty values as floats
                col = _whole(pc.replace_substring_regex(col, r"^([-+]?\d+)\.0*$", r"\1"))
    if pa.types.is_time(col.type) and pa.types.is_string(target):  # a Parquet time as a CSV file writes it, 08:00:00
        col = pc.replace_substring_regex(pc.cast(col, pa.string()), r"\.0+$", "")  # (Arrow: 08:00:00.000000)
    got = pc.cast(col, target)
    if f.kind == "float" and pc.any(pc.fill_null(pc.invert(pc.is_finite(got)), False)).as_py():
        raise pa.ArrowInvalid("not a finite number")  # NaN, inf, 1e400: no measured value
    return got


EXPONENT = r"^[-+]?\d*\.?\d+[eE][-+]?\d+$"
SPREADSHEET = r"[-+]?\d\.\d{5}E\+\d+"  # a long number as a spreadsheet shows it: 6 digits kept, the others lost


def _whole(col: pa.Array) -> pa.Array:
    """Numbers written with an exponent (1e+05 as R's write.csv writes 100000, 1e5 readr, 1.0E10 Java) as their
    digits, when whole; not a spreadsheet's rounding (1.23457E+11), whose lost digits cannot be told."""
    sci = pc.fill_null(pc.match_substring_regex(col, EXPONENT), False)
    if not pc.any(sci).as_py():
        return col
    new = []
    for v in col.filter(sci).to_pylist():
        d = decimal.Decimal(v)
        whole = d.adjusted() < 19 and d == d.to_integral_value() and not re.fullmatch(SPREADSHEET, v.strip())
        new.append(str(int(d)) if whole else v)  # (past 10^19 out of range: said so, its digits not written out)
    return pc.replace_with_mask(col, sci, pa.array(new, pa.string()))


CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError)
NULL_MARKS = {"NULL", "NA", "N/A", "\\N", "NONE", "NAN", "#N/A", "."}  # how some exports write an empty value


def _refused(convert: Callable[[pa.Array], pa.Array], col: pa.Array, limit: int) -> list[int]:
    """Indices of the values `convert` refuses, found by converting halves (the same conversion, not a
    re-implementation of it); stops after `limit` + 1."""
    found: list[int] = []
    todo = [(0, len(col))]
    while todo and len(found) <= limit:
        lo, n = todo.pop()
        try:
            convert(col.slice(lo, n))
        except CAST_ERRORS:
            if n == 1:
                found.append(lo)
            else:
                todo += [(lo + n // 2, n - n // 2), (lo, n // 2)]
    return sorted(found)


def _utf8(col: pa.Array, name: str, limit: int, bad: dict[int, list[tuple[str, str, str]]],
          garbled: set[tuple[int, str]]) -> pa.Array:
    """A column of bytes as text; a value that is not UTF-8 is added to `bad` (and `garbled`) and left empty."""
    try:
        return col.cast(pa.string())
    except CAST_ERRORS:
        pass
    wrong = _refused(lambda c: c.cast(pa.string()), col, limit)
    for i in wrong:
        v = col[i].as_py()
        try:
            v.decode("utf-8")
        except UnicodeDecodeError as e:
            at = f"byte {e.start + 1} ({v[e.start:e.start + 4]!r})"
        bad.setdefault(i, []).append((name, "wrong_encoding", f"field {name}: {at} is not UTF-8; give the file's "
                                      "encoding with --encoding (e.g. cp1252, latin-1) or export it as UTF-8, and "
                                      "import again"))
        garbled.add((i, name))
    if len(bad) > limit:  # (the values past the limit were not looked for: the cast below would fail on them)
        raise _TooMany(bad)
    mask = np.zeros(len(col), dtype=bool)
    mask[wrong] = True
    return pc.if_else(pa.array(mask), pa.scalar(None, pa.binary()), col).cast(pa.string())


def _columns(header: list[str], table: str) -> list[str]:
    """A file's column names as the table's fields are named: any case, spaces around, and the table's name before
    them as Hive and Spark SQL clients write it (`person.person_id`) taken off; a byte-order mark after blank lines
    (which the reader keeps in the first name) too."""
    names = [n.lstrip("\ufeff").lower().strip() for n in header]
    return [n.removeprefix(f"{table}.") for n in names]


def _swallowed(col: pa.Array, name: str, delimiter: str, columns: int, at: int,
               bad: dict[int, list[tuple[str, str, str]]]) -> tuple[int, int] | None:
    """Add to `bad` the rows whose value of `col` (the file's column `at` of `columns`) runs over lines that read as
    rows of the file: a quote opened and not closed swallows the rows after it, up to the next quote, into one value
    (a row is then lost from the count). A line inside the value with as many delimiters as the header is such a row;
    so is its last line, where the quote closes, when it holds the delimiters before the field and its first line
    those after it (the rest of the row the quote opened in). Returns (rows of the file so swallowed, row index of
    the first value that did), if any."""
    if columns < 4 or not _has_breaks(col):
        return None
    swallowed, first = 0, None
    for i in pc.indices_nonzero(pc.fill_null(pc.match_substring(col, "\n"), False)).to_pylist():
        lines = col[i].as_py().split("\n")
        rows = sum(x.count(delimiter) >= columns - 1 for x in lines[1:-1]) + (
            lines[-1].count(delimiter) >= at and lines[0].count(delimiter) >= columns - 1 - at)
        if rows:
            bad.setdefault(i, []).append((name, "unclosed_quote", f"field {name}: its value runs over {len(lines)} "
                                          f"lines, {rows} of them a row of the file (a quote opened there and not "
                                          "closed?); close the quote in the file and import again"))
            swallowed, first = swallowed + rows, i if first is None else first
    return (swallowed, first) if swallowed else None


def _headers(data: dict[str, pa.Array], table: str, bad: dict[int, list[tuple[str, str, str]]],
             garbled: set[tuple[int, str]]) -> None:
    """Rows that are the header again (files joined one after the other) added to `bad`, once each, their values
    left empty (and in `garbled`, so that they are not said again field by field)."""
    first = next(iter(data))
    mask = None
    for name, c in data.items():
        if not pa.types.is_string(c.type):
            return
        same = pc.fill_null(pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(c)), pa.array([name, f"{table}.{name}"])),
                            False)
        mask = same if mask is None else pc.and_(mask, same)
        if not pc.any(mask).as_py():  # (the usual case: the first column's values are no header)
            return
    rows = pc.indices_nonzero(mask).to_pylist()
    for i in rows:
        bad.setdefault(i, []).append((first, "header_row", "the file's header again, inside it (files joined one "
                                      "after the other?): remove the line and import again"))
        garbled.update((i, name) for name in data)
    if rows:
        for name, c in data.items():
            data[name] = pc.if_else(mask, pa.scalar(None, c.type), c)


def _readable(t: pa.DataType, kind: str) -> bool:
    """Whether values of type `t` are read as a field of `kind`, beyond a cast existing: a true or a time is no number
    (the cast would give 1, or the time's count of milliseconds since 1970), and a true no date."""
    t = t.value_type if pa.types.is_dictionary(t) else t
    if kind in ("bigint", "integer", "float"):
        return not (pa.types.is_boolean(t) or pa.types.is_temporal(t))
    if kind in ("date", "datetime"):
        return not (pa.types.is_boolean(t) or pa.types.is_time(t) or pa.types.is_duration(t))
    return True


def _conform(batch: pa.RecordBatch, table: model.Table, schema: pa.Schema, path: Path, limit: int, decimal: str = ".",
             delimiter: str | None = None, dates: str | None = None, skip_unknown: bool = False,
             quoted: bool = False, nulls: tuple[str, ...] = ()
             ) -> tuple[pa.Table, dict[int, list[tuple[str, str, str]]], dict[tuple[str, str], tuple[int, int]]]:
    """The batch as the table's Arrow schema, less the rows that cannot be imported; those as
    {row index: [(field, reason, detail)]}. More than `limit` such rows: CdmImportError. Text longer than the spec's
    length for its field is cut to it, as the OMOP DDL holds it (PostgreSQL refuses it whole), and counted, as are
    texts NULL and \\N kept in a text field and texts that held a NUL character (left out of them): {(field, "cut",
    "null_text" or "nul"): (values, row index of the first)}.
    `delimiter`: a CSV file's, whose values that swallowed rows after a quote not closed are left out; `dates`: the
    form of dates besides YYYY-MM-DD (--date-format); `skip_unknown`: columns that are no field of the table are left
    out, counted as {(column, "skipped"): (values, row index of the first)}, instead of stopping the import; rows of
    the file swallowed by a value whose quote is not closed are counted as {(field, "swallowed"): (rows, row index
    of the value)}; `quoted`: a CSV file whose header is quoted, as QUOTE_ALL and QUOTE_NONNUMERIC exports write NULL
    as "" (pandas, Python's csv): its empty texts counted as {(field, "quoted_empty"): (values, row index of the
    first)}; `nulls`: texts that mean empty in a Parquet file's text columns (--null; CSV's reader reads them so)."""
    names = _columns(batch.schema.names, table.name)
    width, at = len(names), {n: i for i, n in enumerate(names)}  # the file's columns (before any is left out)
    if "" in names and len(names) > 1:  # a delimiter at the end of every line: a column without a name
        held = [i for i, n in enumerate(names) if not n and batch.column(i).null_count < batch.num_rows]
        if held:
            raise CdmImportError(f"{path}: a column without a name in the header holds values" + (
                " (R's write.csv writes its row names so: give it row.names = FALSE)" if held == [0] else "")
                + "; name it or remove it")
        named = [i for i, n in enumerate(names) if n]
        batch, names = batch.select(named), [names[i] for i in named]
    unknown = [n for n in names if n not in table.field_names]
    if names and len(unknown) == len(names) and any(names):  # (whatever --skip-unknown-columns says)
        raise CdmImportError(f"{path}: its first line ({', '.join(batch.schema.names[:4])}"
                             f"{', …' if len(names) > 4 else ''}) names no field of {table.name}: a file without a "
                             "header row (as bcp, or \\copy without HEADER, writes one)? Export it with the fields' "
                             "names on its first line")
    counted: dict[tuple[str, str], tuple[int, int]] = {}  # notes found before the values are read (below)
    if unknown and skip_unknown:
        for i, n in enumerate(names):
            if n in unknown:
                col = batch.column(i)
                counted[n, "skipped"] = (len(col) - col.null_count, pc.index(col.is_valid(), True).as_py()
                                         if col.null_count < len(col) else 0)
        known = [i for i, n in enumerate(names) if n not in unknown]
        batch, names, unknown = batch.select(known), [names[i] for i in known], []
    if unknown:
        raise UnknownColumns(f"{path}: column(s) {', '.join(unknown)} are not fields of {table.name} "
                             f"(fields: {', '.join(table.field_names)})", unknown)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CdmImportError(f"{path}: column(s) {', '.join(twice)} appear more than once in the header; keep one "
                             "of each")
    data = dict(zip(names, batch.columns))
    absent = [f.name for f in table.fields if f.required and f.name not in data]
    if absent:
        raise MissingColumns(f"{path}: no column {', '.join(absent)}, required in {table.name}: add it to the file",
                             absent, names)
    bad: dict[int, list[tuple[str, str, str]]] = {}
    garbled: set[tuple[int, str]] = set()  # (row, field) of values already said (not UTF-8, a header): left empty
    nul: dict[str, pa.Array] = {}  # the values of a field that held a NUL character
    as_read: dict[str, pa.Array] = {}  # numbers as the file writes them, before a decimal comma is read as a point
    for name, col in list(data.items()):
        if pa.types.is_large_string(col.type) or pa.types.is_string_view(col.type):  # (Parquet from other tools)
            col = data[name] = col.cast(pa.string())
        elif pa.types.is_large_binary(col.type) or pa.types.is_binary_view(col.type):
            col = data[name] = col.cast(pa.binary())
        if pa.types.is_binary(col.type):
            data[name] = _utf8(col, name, limit, bad, garbled)
        kept = ddl.without_nul(data[name])
        if kept is not data[name]:  # a NUL character (padding of a fixed-width export) left out, and counted
            nul[name] = pc.fill_null(pc.match_substring(data[name], "\x00"), False)
        data[name] = kept
        if delimiter is not None and pa.types.is_string(data[name].type):
            lost = _swallowed(data[name], name, delimiter, width, at[name], bad)
            if lost:  # counted, so that the rows loaded and set aside add up to the file's (said by the CLI)
                counted[name, "swallowed"] = lost
    if delimiter is not None:
        _headers(data, table.name, bad, garbled)
    for f in table.fields:  # a quoted empty field ("") is an empty text; in a field of another kind, empty, as is a
        col = data.get(f.name)  # blank one (fixed-width and SQL Server exports write NULL so), in Parquet text too
        if col is not None and pa.types.is_string(col.type) and (nulls or f.kind != "varchar"):
            empty = pc.is_in(col, pa.array(nulls, pa.string()))
            if f.kind != "varchar":
                empty = pc.or_(empty, pc.equal(pc.utf8_trim_whitespace(col), ""))
            data[f.name] = pc.if_else(empty, pa.scalar(None, pa.string()), col)
    if decimal != ".":  # 7,5 as a European export writes a number
        for f in table.fields:
            if f.kind == "float" and f.name in data and pa.types.is_string(data[f.name].type):
                col = data[f.name]
                dotted = pc.fill_null(pc.match_substring(col, "."), False)
                for i in pc.indices_nonzero(dotted).to_pylist():  # 1.234: a thousands separator, or a decimal point?
                    bad.setdefault(i, []).append((f.name, "invalid", (
                        f"field {f.name}: cannot read {_shown(col[i].as_py())} as float (a '.' in a number of a file "
                        f"whose decimal mark is '{decimal}': a thousands separator, or a decimal point?); write the "
                        "number without it and import again")))
                as_read[f.name] = col
                col = pc.if_else(dotted, pa.scalar(None, pa.string()), col)  # (said above; not read again)
                data[f.name] = pc.replace_substring(col, decimal, ".")
    done: dict[str, pa.Array] = {}
    for f, af in zip(table.fields, schema):
        col = data.get(f.name)
        if col is None:
            continue
        try:  # a type no value of which can be read as the field's (a Parquet list or struct): the file's form
            if not pa.types.is_string(col.type):  # (text reads as every kind)
                _cast(col.slice(0, 0), f, af.type, dates)
                if not _readable(col.type, f.kind):
                    raise pa.ArrowNotImplementedError
        except pa.ArrowNotImplementedError:
            raise CdmImportError(f"{path}: column {f.name} holds {col.type} values, which cannot be read as the "
                                 f"{f.kind} of {table.name}.{f.name}: convert the column to {f.kind} values, or to "
                                 "text as a CSV file holds them") from None
        if f.required and col.null_count:
            for i in pc.indices_nonzero(col.is_null()).to_pylist():
                if (i, f.name) not in garbled:
                    bad.setdefault(i, []).append((f.name, "missing_mandatory", f"field {f.name} is required in "
                                                  f"{table.name} but empty; fill it in the file and import again"))
        try:
            done[f.name] = _cast(col, f, af.type, dates)
        except CAST_ERRORS:
            for i in _refused(lambda c: _cast(c, f, af.type, dates), col, limit):
                v = as_read.get(f.name, col)[i].as_py()
                fix = (f"if it means empty, give --null {_shown(v)}" if pa.types.is_string(col.type)
                       and str(v).strip().upper() in NULL_MARKS else
                       "if it is a decimal comma, give --decimal ','" if f.kind == "float" and decimal == "."
                       and re.fullmatch(r"\s*[-+]?\d*,\d+\s*", str(v)) else
                       _date_hint(str(v)) if f.kind in ("date", "datetime") and not dates
                       and re.match(r"\s*\d{1,2}[/.-]\d{1,2}[/.-]\d{4}\b", str(v)) else
                       "fix the value in the file and import again")
                bad.setdefault(i, []).append((f.name, "invalid", f"field {f.name}: cannot read {_shown(v)} as {f.kind} "
                                              f"({_why(v, f.kind, dates)}); {fix}"))
        if len(bad) > limit:
            break
    if len(bad) > limit:
        raise _TooMany(bad)
    keep = None
    if bad:
        mask = [True] * batch.num_rows
        for i in bad:
            mask[i] = False
        keep = pa.array(mask)
    cols = []
    notes: dict[tuple[str, str], tuple[int, int]] = dict(counted)

    def note(field: str, what: str, mask: pa.Array) -> None:
        n = pc.sum(mask).as_py()
        if n:
            first = pc.index(mask, True).as_py()
            notes[field, what] = (n, first if keep is None else pc.indices_nonzero(keep)[first].as_py())

    for f, af in zip(table.fields, schema):
        if f.name not in data:
            cols.append(pa.nulls(batch.num_rows if keep is None else batch.num_rows - len(bad), af.type))
            continue
        if f.name in done:
            col = done[f.name] if keep is None else done[f.name].filter(keep)
        else:  # this column had bad values: the rest of it converts
            col = _cast(data[f.name].filter(keep), f, af.type, dates)
        if f.kind == "varchar" and f.length:
            over = pc.fill_null(pc.greater(pc.utf8_length(col), f.length), False)
            note(f.name, "cut", over)
            if (f.name, "cut") in notes:
                col = pc.if_else(over, pc.utf8_slice_codeunits(col, 0, f.length), col)
        if f.kind == "varchar":
            note(f.name, "null_text", pc.fill_null(pc.is_in(col, pa.array(["NULL", "\\N"])), False))
            if quoted:
                note(f.name, "quoted_empty", pc.fill_null(pc.equal(col, ""), False))
        if f.name in nul:
            note(f.name, "nul", nul[f.name] if keep is None else nul[f.name].filter(keep))
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema), bad, notes


def _shown(v) -> str:
    """A value as the file holds it and a shell takes it, in single quotes (\\N is `'\\N'`, not repr's `'\\\\N'`)."""
    return f"'{v}'" if isinstance(v, str) and "'" not in v else repr(v)


def _date_hint(v: str) -> str:
    """What to give for a date written day and month first (31/01/2020, 1/31/2020), as a spreadsheet saves it."""
    a, sep, b = re.match(r"\s*(\d+)([/.-])(\d+)", v).groups()
    day_first = f"'%d{sep}%m{sep}%Y'"
    month_first = f"'%m{sep}%d{sep}%Y'"
    form = (day_first if int(a) > 12 else month_first if int(b) > 12 else
            f"{month_first} or {day_first} (which is the day?)")
    return f"if the file writes its dates so, give --date-format {form}"


class _TooMany(Exception):
    def __init__(self, bad):
        self.bad = bad


def _raw_rows(batch: pa.RecordBatch, rows: list[int], csv_delimiter: str | None) -> dict[int, bytes]:
    """Rows of a batch as read: a CSV line (the file's columns and delimiter) or, from Parquet, a JSON object."""
    names = batch.schema.names
    out = {}
    for i in rows:
        values = [batch.column(k)[i].as_py() for k in range(len(names))]
        values = [v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v for v in values]
        if csv_delimiter is None:
            out[i] = json.dumps(dict(zip(names, values)), default=str).encode("utf-8", "surrogateescape")
        else:
            buf = io.StringIO()
            csv.writer(buf, delimiter=csv_delimiter, lineterminator="").writerow(["" if v is None else v
                                                                                 for v in values])
            out[i] = buf.getvalue().encode("utf-8", "surrogateescape")  # the bytes as read, not UTF-8 ones too
    return out


def _invalid_lines(path: Path, texts: list[str], encoding: str) -> list[int | None]:
    """The file lines of the CSV rows the reader skipped (it does not number them), found in order by text (by
    its first line: a quoted value may run over several)."""
    texts = [t.split("\n", 1)[0].rstrip("\r") for t in texts]
    lines: list[int | None] = []
    with _text(path, encoding) as fh:
        want = iter(texts)
        text = next(want, None)
        for n, line in enumerate(fh, 1):
            if text is None:
                break
            if n > 1 and line.rstrip("\r\n") == text:
                lines.append(n)
                text = next(want, None)
    return lines + [None] * (len(texts) - len(lines))


def _malformed(expected: int, found: int) -> str:
    return (f"{found} fields where the header has {expected}; check the quoting and --delimiter, fix the line and "
            "import again")


def _stop_at_invalid(path: Path, invalid: list[tuple[str, int, int]], encoding: str):
    text, expected, found = invalid[0]
    raise CdmImportError(f"{_at(path, _invalid_lines(path, [text], encoding)[0])}: {_malformed(expected, found)}")


def _too_many_invalid(path: Path, max_bad: int, invalid: list[tuple[str, int, int]]):
    raise CdmImportError(f"{path}: more than {max_bad:,} rows cannot be imported ({len(invalid):,} CSV lines with the "
                       "wrong number of fields so far): check --delimiter and the file; nothing was imported")


def _line(line: int, skipped: list[tuple[int, int]]) -> int:
    """The file line of a row read as at `line` when the reader skipped the rows `skipped` (sorted (first line,
    lines it spans))."""
    for first, span in skipped:
        if first <= line:
            line += span
    return line


def _add_notes(notes: dict, more: dict) -> None:
    """Add `more` {(field, what): (values, where the first is)} of a later batch or file to `notes`: the counts
    summed, the first place kept."""
    for key, (n, at) in more.items():
        before, first = notes.get(key, (0, at))
        notes[key] = (before + n, first if before else at)  # (a column skipped may have no values in a batch)


def _with_partition(batch: pa.RecordBatch, partition: dict[str, str | None], table: model.Table
                    ) -> tuple[pa.RecordBatch, dict[str, int]]:
    """The batch with its part file's Hive partition values (`_partition`) as columns of text, read as the rest of
    the file, for the fields of the table the file does not hold; the others (a column that is no field, as Spark's
    derived `measurement_date_year`) left out, as {column: values}."""
    names = set(_columns(batch.schema.names, table.name))
    left_out: dict[str, int] = {}
    for key, value in partition.items():
        [name] = _columns([key], table.name)
        if name in names:
            continue  # the file holds the column itself
        if name not in table.field_names:
            left_out[name] = 0 if value is None else batch.num_rows
            continue
        batch = batch.append_column(name, pa.nulls(batch.num_rows, pa.string()) if value is None
                                    else pa.repeat(pa.scalar(value, pa.string()), batch.num_rows))
        names.add(name)
    return batch, left_out


def _load_file(engine, table: model.Table, schema: pa.Schema, path: Path, fmt: CsvFormat, strict: bool,
               max_bad: int, used: int, loaded: Callable[[int], None] = lambda rows: None, skip_unknown: bool = False,
               partition: dict[str, str | None] | None = None
               ) -> tuple[int, list[BadRow], dict[tuple[str, str], tuple[int, str]]]:
    """Load one file of a table: (rows loaded, rows left out, {(field, what): (values, where the first is)}); more than
    `max_bad` rows left out, with the `used` of the files before, stops the import; `skip_unknown`: columns that are
    no field of the table are left out (and counted) instead of stopping it; `partition`: the file's Hive partition
    values ({column: value}), of its fields read as the file's columns, the others left out and counted as
    (column, "skipped")."""
    budget = max_bad - used
    parquet = path.name.lower().endswith(".parquet")
    invalid: list[tuple[str, int, int]] | None = None if parquet else []
    typed = parquet  # columns read as their types, not as CSV text
    emptied: list[int] = []  # rows of no value left out per batch (blank lines, delimiters alone)
    if parquet:
        batches = _parquet_batches(path)
    else:
        fmt, header, blank = _sniff(path, fmt)
        if _athena(path, fmt, table, blank):
            typed, invalid, batches = True, None, _vocab_batches(path, table)
        else:
            batches = _csv_batches(path, fmt, header, invalid, blank, emptied)
    rows, bad, notes = 0, [], {}  # bad: (line as read, problems, raw row); notes: {(field, what): (values, line)}
    malformed: int | None = 0  # --strict: the file line of the first line with the wrong number of fields (None:
    # not found by its text), once the reader has skipped one
    read = False
    for batch, line in batches:
        read = True
        left = 0 if strict else budget - len(bad) - len(invalid or [])
        if left < 0:
            _too_many_invalid(path, max_bad, invalid)
        if strict and invalid and malformed == 0:  # the reader may have skipped it ahead of this batch
            malformed = _invalid_lines(path, [invalid[0][0]], fmt.encoding)[0]
        if partition:
            batch, left_out = _with_partition(batch, partition, table)
            _add_notes(notes, {(name, "skipped"): (n, line(0)) for name, n in left_out.items()})
        try:
            data, problems, noted = _conform(batch, table, schema, path, left, *(() if typed else (fmt.decimal,
                                                                                          fmt.of(path))),
                                             dates=fmt.dates, skip_unknown=skip_unknown,
                                             quoted=fmt.quoted and not typed,
                                             nulls=tuple(n for n in fmt.nulls if n) if parquet else ())
        except _TooMany as e:
            i = min(e.bad)
            at, why = _at(path, line(i)), e.bad[i][0][2]
            if strict and invalid and (malformed is None or line(i) >= malformed):
                _stop_at_invalid(path, invalid, fmt.encoding)  # a line with the wrong number of fields comes first
            if strict:
                raise CdmImportError(f"{at}: {why}") from None
            raise CdmImportError(
                f"{path}: more than {max_bad:,} rows cannot be imported (the first: {at}: {why}): "
                "the files are not in the form the import reads; fix them, or raise --max-bad-rows; "
                "nothing was imported") from None
        if strict and invalid and (malformed is None or not batch.num_rows or malformed <= line(batch.num_rows - 1)):
            _stop_at_invalid(path, invalid, fmt.encoding)  # in this batch; one after it: this batch loads first
        if problems:
            raw = _raw_rows(batch, sorted(problems), None if parquet else fmt.of(path))
            bad += [(line(i), problems[i], raw[i]) for i in sorted(problems)]
        _add_notes(notes, {k: (n, line(i)) for k, (n, i) in noted.items()})
        rows += engine.load_arrow(table.name, data)
        loaded(rows)
    if not read and not parquet and header and header != [""]:
        # a header alone is checked as the header of rows is (one row exported without a header is such a file)
        _conform(pa.RecordBatch.from_pydict({n: pa.array([], pa.binary()) for n in header}), table, schema, path, 0,
                 skip_unknown=skip_unknown)
    if strict and invalid:
        _stop_at_invalid(path, invalid, fmt.encoding)
    skipped = _invalid_lines(path, [t for t, _, _ in invalid], fmt.encoding) if invalid else []
    if invalid and len(bad) + len(invalid) > budget:
        _too_many_invalid(path, max_bad, invalid)
    known = sorted((x, t.count("\n") + 1) for x, (t, _, _) in zip(skipped, invalid or []) if x is not None)
    left_out = [BadRow(table.name, path, _line(at, known), problems[0][0], problems[0][1],
                       "; ".join(p[2] for p in problems), raw) for at, problems, raw in bad]
    left_out += [BadRow(table.name, path, at, None, "malformed", _malformed(expected, found), text.encode())
                 for (text, expected, found), at in zip(invalid or [], skipped)]
    if any(emptied):  # a blank line holds no row; a line of delimiters alone, a row of empty fields, is set aside
        required = next((f.name for f in table.fields if f.required), None)
        for at in _delimiters_only(path, fmt, len(header)):
            why = (f"no value in any field (a line of delimiters alone); field {required} is required in "
                   f"{table.name}: remove the line, or fill it, and import again")
            if strict:
                raise CdmImportError(f"{_at(path, at)}: {why}")
            left_out.append(BadRow(table.name, path, at, required, "missing_mandatory", why,
                                   (fmt.of(path) * (len(header) - 1)).encode()))
    noted = {k: (n, _at(path, _line(at, known))) for k, (n, at) in notes.items()}
    stray = [] if typed else _stray_quotes(path, fmt)  # (lines of the file as it is: no _line)
    return rows, left_out, noted | ({("", "stray_quote"): (len(stray), _at(path, stray[0]))} if stray else {})


def csv_format(delimiter: str = ",", encoding: str = "utf-8", nulls: tuple[str, ...] = (),
               decimal: str = ".", dates: str | None = None) -> CsvFormat:
    """The CSV options, checked (CdmImportError naming the one that cannot be)."""
    if len(delimiter) != 1:
        raise CdmImportError(f"the delimiter must be one character (',', ';', '|', or '\\t' for a tab), "
                             f"not {delimiter!r}")
    try:
        if not codecs.lookup(encoding)._is_text_encoding:
            raise LookupError
    except LookupError:
        raise CdmImportError(f"{encoding!r} is not a text encoding (e.g. utf-8, cp1252, latin-1, gb18030, utf-16)")
    if decimal not in (".", ","):
        raise CdmImportError(f"the decimal mark is '.' or ',', not {decimal!r}")
    # (a decimal comma in a comma-separated file is quoted, "7,5": the reader tells them apart; one not quoted
    # makes its line a field too long, set aside as such)
    if dates is not None:
        if "%y" in dates:
            raise CdmImportError(f"the date format {dates!r} has a two-digit year (%y): 1/31/45 is 1945 or 2045? "
                                 "export the dates with four-digit years (%Y)")
        if not all(x in dates for x in ("%Y", "%d")) or not ("%m" in dates or "%b" in dates):
            raise CdmImportError(f"the date format {dates!r} needs a day (%d), a month (%m, or %b for Jan) and a year "
                                 "(%Y), as in '%m/%d/%Y' or '%d.%m.%Y'; a time after the date is read without it")
    return CsvFormat(delimiter, encoding, ("", *nulls), decimal, dates)


def files_version(folder: str | Path, delimiter: str = ",", encoding: str = "utf-8") -> str | None:
    """The CDM version the files of `folder` are of, when they say: every file's table and columns are of one version
    and not the other (v5.3's visit_occurrence.admitting_source_concept_id, v5.4's episode, a cdm_source without
    v5.4's required cdm_version_concept_id); else None."""
    fits = set(model.VERSIONS)
    for these in _versions(folder, csv_format(delimiter, encoding)).values():
        fits &= these
    return fits.pop() if len(fits) == 1 else None


def _versions(folder: str | Path, fmt: CsvFormat) -> dict[Path, set[str]]:
    """{table file or folder of `folder`: the CDM versions its table and columns are of} (`files_version`)."""
    found = {}
    for p in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        name = _table_name(p)
        if name is None:
            continue
        try:
            parts = _parts(p)
            if not parts:  # an empty table's folder (Spark's): its name alone says
                if not any(name in model.load(v).table_names for v in model.VERSIONS):
                    continue
                cols = []
            else:  # (a partition folder's column is not among them: it may be no field, as Spark's derived year)
                first = parts[0]
                cols = pq.read_schema(first).names if _suffix(first) == ".parquet" else _sniff(first, fmt)[1]
        except (CdmImportError, pa.ArrowInvalid, OSError):
            continue  # the import says what is wrong with it
        cols = set(_columns(cols, name)) - {""}
        found[p] = {v for v in model.VERSIONS if name in model.load(v).table_names
                    and cols <= set(model.load(v).table(name).field_names) and not _lacks(name, v, cols)}
    return found


def _one_version(folder: Path, fmt: CsvFormat) -> None:
    """Stop, naming the files of each, an import of a folder holding files of one CDM version only and others of
    the other only (a site half-way through a migration): with either --version, the other's files would be said."""
    only = {v: [p.name for p, fits in _versions(folder, fmt).items() if fits == {v}] for v in model.VERSIONS}
    if all(only.values()):
        raise CdmImportError(f"{folder}: files of two OMOP CDM versions: " + "; ".join(
            f"v{v} {', '.join(names[:5])}{', …' * (len(names) > 5)}" for v, names in sorted(only.items()))
            + ": export every table of one version (or move the other's files out of the folder) and import again")


def _lacks(name: str, version: str, columns) -> bool:
    """Whether a header's `columns` lack a field table `name` requires in `version` and not in the other version
    (which has the table too): v5.4's cdm_source.cdm_version_concept_id."""
    other = model.load(other_version(version))
    if not columns or name not in other.table_names:
        return False
    theirs = {f.name for f in other.table(name).fields if f.required}
    return any(f.required and f.name not in columns and f.name not in theirs
               for f in model.load(version).table(name).fields)


def _fits(table: model.Table, columns) -> bool:
    """Whether a file of these columns can be `table`: each is a field of it, and each required field is there."""
    return set(columns) <= set(table.field_names) and all(f.name in columns for f in table.fields if f.required)


def import_folder(engine, folder: str | Path, version: str = model.DEFAULT_VERSION, *, delimiter: str = ",",
                  encoding: str = "utf-8", nulls: tuple[str, ...] = (), decimal: str = ".", dates: str | None = None,
                  progress: Callable[[str, int, int], None] | None = None, strict: bool = False,
                  max_bad: int = MAX_BAD, skip_unknown: bool = False,
                  set_aside: Callable[[dict[str, Path], list[BadRow]], None] | None = None) -> dict[str, Imported]:
    """Load every table file (or folder of part files) of `folder` into the store; return {table: Imported(file,
    rows, bad rows)}.

    Rows that cannot be imported are left out and given to `set_aside` with the tables imported ({table: file};
    once, before the transaction commits: an error there rolls the import back); `strict`: the first one stops
    the import instead. CSV files: `delimiter`, `encoding`, `nulls`, the texts that mean empty besides the empty
    text (SQL Server's NULL, R's NA), `decimal`, the decimal mark ('.' or ','), and `dates`, the form of dates
    besides YYYY-MM-DD, as strptime writes it ('%m/%d/%Y'; of text dates in Parquet files too). `skip_unknown`:
    columns that are no field of their table (a site's own) are left out, each counted in the table's notes as
    (column, "skipped"), instead of stopping the import.
    """
    fmt = csv_format(delimiter, encoding, nulls, decimal, dates)
    cdm = model.load(version)
    held = store.info(engine).get("cdm_version")
    _one_version(Path(folder), fmt)
    files = _table_files(Path(folder), cdm, held)
    report: dict[str, Imported] = {}
    left_out: list[BadRow] = []
    with engine.transaction():
        store.init(engine, version)  # (an import that stops leaves a new store as it was: not of the version tried)
        for n, (name, path) in enumerate(files.items()):
            if progress:
                progress(name, n, len(files))
            table = cdm.table(name)
            schema = ddl.arrow_schema(table)
            if engine.query(f'SELECT count(*) AS n FROM "{name}"').column(0)[0].as_py():
                engine.execute(f'DELETE FROM "{name}"')  # the file replaces the table: importing twice is a no-op
                # (a folder without data files too: the table emptied at the site, as Spark leaves it, is empty here)
            rows, bad, notes = 0, 0, {}
            for part in _parts(path):
                try:
                    done, aside, noted = _load_file(
                        engine, table, schema, part, fmt, strict, max_bad, len(left_out),
                        lambda k, before=rows: progress(f"{name} ({before + k:,} rows)", n, len(files)) if progress
                        else None, skip_unknown, _partition(path, part))
                except UnknownColumns as e:
                    other = model.load(other_version(version))
                    if name in other.table_names and set(e.columns) <= set(other.table(name).field_names):
                        raise CdmImportError(f"{part}: column(s) {', '.join(e.columns)} are fields of {name} in OMOP "
                                             f"CDM v{other.version}, not v{version}: {switch_to(other.version, held)}"
                                             ) from None
                    raise UnknownColumns(f"{e}; give --skip-unknown-columns to leave them out", e.columns) from None
                except MissingColumns as e:  # (v5.4's cdm_source.cdm_version_concept_id in a v5.3 export)
                    other = model.load(other_version(version))
                    if name in other.table_names and _fits(other.table(name), e.present):
                        raise CdmImportError(f"{part}: no column {', '.join(e.columns)}, required in {name} in OMOP "
                                             f"CDM v{version}, not in v{other.version}: "
                                             f"{switch_to(other.version, held)}") from None
                    raise
                rows, bad = rows + done, bad + len(aside)
                left_out += aside
                _add_notes(notes, noted)
            report[name] = Imported(path, rows, bad, notes)
        if set_aside:
            set_aside(dict(files), left_out)
        # the CDM is the site's, loaded, not made by medlake's pipeline: what to do about a failed check is said
        # for the site's ETL (a quality run's `medlake_store`), not as `medlake trace` or `transform`
        store.set_info(engine, IMPORTED, str(Path(folder).resolve()))
        if progress:
            progress("done", len(files), len(files))
    index_lookups(engine, list(files))
    return report
