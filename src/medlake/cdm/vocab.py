"""Load an Athena vocabulary download (tab-separated, YYYYMMDD dates) into a store.

Streamed in batches; strict parsing (a malformed row stops the load, naming file, line and field); the
whole load is one transaction, so a failure leaves the store as it was; row counts are verified against
the files, and a table's primary key (concept_id, vocabulary_id, …) must not repeat. Loading a newer release
replaces the tables it brings.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from medlake.cdm import model
from medlake.cdm.ddl import ARROW_TYPES, without_nul

VOCAB_FILES = (
    "vocabulary", "domain", "concept_class", "relationship", "concept", "concept_relationship",
    "concept_synonym", "concept_ancestor", "drug_strength",
)
BLOCK = 16 << 20  # bytes per streamed block

PATTERNS = {
    "integer": r"^-?[0-9]+$",
    "bigint": r"^-?[0-9]+$",
    "float": r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$",
    "date": r"^[0-9]{8}$",
}


class VocabError(ValueError):
    """A vocabulary file is missing or malformed; the message names file, line and field."""


@dataclass
class VocabReport:
    folder: str
    files: dict[str, int] = field(default_factory=dict)  # table -> rows in file
    loaded: dict[str, int] = field(default_factory=dict)  # table -> rows in store after load
    missing: list[str] = field(default_factory=list)
    version: str | None = None
    kept: dict[str, int] = field(default_factory=dict)  # table -> the site's own rows kept over a reload

    @property
    def verified(self) -> bool:
        return all(self.loaded.get(t) == n for t, n in self.files.items())


def demo_vocabulary_dir() -> Path:
    """The demo vocabulary shipped with medlake (a subset for the simulated hospital; not a replacement
    for an Athena download)."""
    return Path(str(resources.files("medlake.cdm").joinpath("demo_vocab")))


def find_files(folder: Path) -> dict[str, Path]:
    found = {}
    for p in folder.iterdir():
        stem = p.name.lower()
        for ext in (".csv", ".tsv", ".txt"):
            if stem.endswith(ext) and stem[: -len(ext)] in VOCAB_FILES:
                found[stem[: -len(ext)]] = p
    return found


def count_rows(path: Path) -> int:
    """Data lines in a file (header excluded), counted from its bytes."""
    n = 0
    last = b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        n += 1
    return max(n - 1, 0)


def _fail(path: Path, first_line: int, column: pa.Array, bad: pa.Array, name: str, kind: str):
    idx = pc.index(bad, True).as_py()
    value = column[idx].as_py()
    raise VocabError(
        f"{path.name}: line {first_line + idx}, field {name}: {value!r} is not a valid {kind}"
        + (" (expected YYYYMMDD)" if kind == "date" else "")
        + "; fix the file or download it again from Athena"
    )


def convert_batch(batch: pa.RecordBatch, table: model.Table, path: Path, first_line: int) -> pa.Table:
    """Strings from the file -> the CDM types of `table`, strictly."""
    cols, names = [], []
    for name in batch.schema.names:
        try:
            f = table.field(name)
        except KeyError as e:
            raise VocabError(f"{path.name}: unknown column {name!r} for table {table.name}") from e
        col = batch.column(name)
        kind = f.kind
        if kind == "varchar":
            col = without_nul(col)
        else:
            bad = pc.invert(pc.match_substring_regex(col, PATTERNS["date" if kind == "datetime" else kind]))
            bad = pc.and_(bad, pc.is_valid(col))
            if pc.any(bad).as_py():
                _fail(path, first_line, col, bad, name, kind)
            if kind in ("date", "datetime"):
                parsed = pc.strptime(col, format="%Y%m%d", unit="s", error_is_null=True)
                if parsed.null_count != col.null_count:
                    _fail(path, first_line, col, pc.and_(pc.is_null(parsed), pc.is_valid(col)), name, kind)
                col = parsed.cast(ARROW_TYPES[kind])
            else:
                try:
                    col = col.cast(ARROW_TYPES[kind])
                except pa.ArrowInvalid:
                    _fail(path, first_line, col, pc.is_valid(col), name, kind)
        if f.required and col.null_count:
            _fail(path, first_line, col, pc.is_null(col), name, "value (field is required)")
        cols.append(col)
        names.append(name)
    missing = [f.name for f in table.fields if f.required and f.name not in names]
    if missing:
        raise VocabError(f"{path.name}: required column(s) missing: {', '.join(missing)}")
    return pa.Table.from_arrays(cols, names=names)


@contextmanager
def undecodable_lines(fail: Callable[[pa.ArrowInvalid], Exception]) -> Iterator[None]:
    """pyarrow decodes a CSV line with the wrong number of fields as UTF-8 before handing it to the
    invalid_row_handler; when it is not UTF-8 the handler is not called (Python prints "Exception ignored") and the
    read fails with pyarrow's parse error: `fail(error)` is raised instead, and nothing printed."""
    undecodable, hook = [], sys.unraisablehook
    sys.unraisablehook = lambda u: undecodable.append(u) if isinstance(u.exc_value, UnicodeDecodeError) else hook(u)
    try:
        yield
    except pa.ArrowInvalid as e:
        if undecodable:
            raise fail(e) from e
        raise
    finally:
        sys.unraisablehook = hook


def _not_utf8(path: Path, names: list[str] | None) -> VocabError | None:
    """The first line of a vocabulary file that is not UTF-8, said with its field; None if every line is."""
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                k = line.count(b"\t", 0, e.start)
                where = "the header" if n == 1 else f"line {n}" + (f", field {names[k]}" if names and k < len(names)
                                                                    else "")
                return VocabError(f"{path.name}: {where}: byte {e.start + 1} ({line[e.start:e.start + 4]!r}) is not "
                                  "UTF-8; Athena's files are UTF-8: download the file again (a spreadsheet that "
                                  "opened and saved it changes its encoding)")
    return None


def _line_breaks(path: Path) -> str:
    """Why rows and lines differ: the first empty line (skipped) or carriage return inside a line (a row break)."""
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip(b"\r\n"):
                return f" (line {n} is empty)"
            if b"\r" in line.rstrip(b"\r\n"):
                return f" (line {n} holds a carriage return, read as the end of a row)"
    return ""


def read_batches(path: Path, table: model.Table):
    """Yield (first_line, converted table) per streamed block of a vocabulary file."""
    bad_rows: list = []

    def on_invalid(row):
        bad_rows.append(row)
        return "error"

    with open(path, "rb") as fh:
        try:
            head = fh.readline().decode("utf-8-sig").rstrip("\r\n").split("\t")
        except UnicodeDecodeError:
            raise _not_utf8(path, None) from None
    names = [h.strip().strip('"').lower() for h in head]
    line = 2

    def guard():  # a line with the wrong number of fields that is not UTF-8, said as such
        return undecodable_lines(lambda e: _not_utf8(path, names) or e)
    try:
        with guard():
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=BLOCK, use_threads=False, column_names=names,
                                               skip_rows=1),
                parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False,
                                                  escape_char=False, newlines_in_values=False,
                                                  invalid_row_handler=on_invalid),
                convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                     null_values=[""], strings_can_be_null=True,
                                                     quoted_strings_can_be_null=False),
            )
        while True:
            try:
                with guard():
                    batch = reader.read_next_batch()
            except StopIteration:
                return
            yield line, convert_batch(batch, table, path, line)
            line += batch.num_rows
    except pa.ArrowInvalid as e:
        if bad_rows:
            r = bad_rows[0]
            where = f"line {r.number}" if r.number is not None else "a row"
            raise VocabError(
                f"{path.name}: {where}: expected {r.expected_columns} tab-separated fields, found "
                f"{r.actual_columns}: {r.text[:120]!r}"
            ) from e
        if "UTF8" in str(e) and (bad := _not_utf8(path, names)):  # pyarrow: "invalid UTF8 data", in a column
            raise bad from e
        raise VocabError(f"{path.name}: {str(e).splitlines()[0]}") from e


LOCAL_CONCEPTS = 2_000_000_000  # OMOP's range for a site's own concepts (the mapping workbench creates them)


def _site_local(engine, files) -> dict[str, pa.Table]:
    """The site's own concepts (id >= 2,000,000,000) and their vocabularies, kept over a vocabulary reload:
    SOURCE_TO_CONCEPT_MAP and the CDM's *_source_concept_id point at them."""
    if "concept" not in engine.tables():
        return {}
    concepts = engine.query(f"SELECT * FROM concept WHERE concept_id >= {LOCAL_CONCEPTS}")
    out = {"concept": concepts}
    vocabs = sorted(set(concepts.column("vocabulary_id").to_pylist()))
    if vocabs and "vocabulary" in files:
        out["vocabulary"] = engine.query("SELECT * FROM vocabulary WHERE vocabulary_id IN "
                                         f"({', '.join('?' for _ in vocabs)})", vocabs)
    return out


# the lookups into the vocabulary (a concept by id or by code, ancestors and descendants, relationships), indexed
# where the engine uses indexes: the OHDSI DDL's indexes on these tables, which every OHDSI database has
LOOKUPS = (("concept", "concept_id"), ("concept", "vocabulary_id", "concept_code"),
           ("concept_relationship", "concept_id_1", "relationship_id"), ("concept_ancestor", "ancestor_concept_id"),
           ("concept_ancestor", "descendant_concept_id"), ("concept_synonym", "concept_id"))


def index_lookups(engine, tables) -> None:
    """After `tables` were filled (a vocabulary load, a CDM import): the vocabulary's LOOKUPS among them indexed
    where the engine uses indexes, and planner statistics where the engine needs them."""
    for table, *keys in LOOKUPS:
        if table in tables:
            engine.index(table, *keys)
    engine.analyze(*tables)


def _unique(engine, table: model.Table, path: Path) -> None:
    """A table with a primary key (CONCEPT, VOCABULARY, DOMAIN, …) has one row per key: a key repeated (a file
    edited by hand, two releases concatenated) would give every record mapped through it two rows."""
    if len(table.primary_key) != 1:
        return
    key = table.primary_key[0]
    dup = engine.query(f"SELECT {key} AS k, count(*) AS n FROM {table.name} GROUP BY {key} HAVING count(*) > 1 "
                       f"ORDER BY {key}").to_pylist()
    if dup:
        more = f" (and {len(dup) - 3} more)" if len(dup) > 3 else ""
        raise VocabError(f"{path.name}: {key} " + ", ".join(f"{x['k']} ({x['n']} rows)" for x in dup[:3]) + more
                         + f" repeated; {table.name.upper()} has one row per {key}: remove the repeated rows or "
                         "download the file again from Athena")


def load(engine, folder: str | Path, version: str = model.DEFAULT_VERSION,
         progress: Callable[[str, int, int], None] | None = None) -> VocabReport:
    """Load every vocabulary file found in `folder` into `engine`, atomically."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VocabError(f"{folder}: not a folder; give the unzipped Athena download")
    cdm = model.load(version)
    files = find_files(folder)
    if "concept" not in files:
        raise VocabError(f"{folder}: no CONCEPT.csv found; give the unzipped Athena download")
    report = VocabReport(folder=str(folder), missing=[t for t in VOCAB_FILES if t not in files])
    missing_tables = [t for t in files if t not in engine.tables()]
    if missing_tables:
        raise VocabError(f"store has no table(s) {', '.join(missing_tables)}: run `medlake init` first "
                         "(`medlake init --cdm-version 5.3` for a v5.3 CDM: a store holds one version), or `medlake cdm "
                         "import` of the CDM's files, which makes the store of their version")
    total = sum(p.stat().st_size for p in files.values())
    done = 0
    kept = _site_local(engine, files)
    with engine.transaction():
        for name in VOCAB_FILES:
            if name not in files:
                continue
            path = files[name]
            report.files[name] = count_rows(path)
            engine.execute(f"TRUNCATE {name}")
            size = path.stat().st_size
            loaded = 0
            for _, part in read_batches(path, cdm.table(name)):
                engine.load_arrow(name, part)
                loaded += part.num_rows
                if progress:
                    progress(name, min(done + int(size * loaded / max(report.files[name], 1)), total), total)
            done += size
            n = engine.query(f"SELECT count(*) AS n FROM {name}").column(0)[0].as_py()
            if kept.get(name) is not None and kept[name].num_rows:  # the site's own concepts stay
                key = kept[name].column_names[0]
                have = {r[key] for r in engine.query(f"SELECT {key} FROM {name} WHERE {key} IN "
                                                     f"({', '.join('?' for _ in range(kept[name].num_rows))})",
                                                     kept[name].column(key).to_pylist()).to_pylist()}
                keep = kept[name].filter(pa.array([v not in have for v in kept[name].column(key).to_pylist()]))
                engine.load_arrow(name, keep)
                report.kept[name] = keep.num_rows
            report.loaded[name] = n
            if n != report.files[name]:
                raise VocabError(f"{path.name}: {report.files[name]} rows in the file but {n} loaded"
                                 + _line_breaks(path) + "; download the file again from Athena")
            _unique(engine, cdm.table(name), path)
    index_lookups(engine, list(files))
    if "vocabulary" in files:
        v = engine.query("SELECT vocabulary_version FROM vocabulary WHERE vocabulary_id = 'None'")
        report.version = v.column(0)[0].as_py() if v.num_rows else None
    return report
