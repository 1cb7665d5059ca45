"""CSV exports: streamed with the declared encoding, mapped column → staging field, row-level rejection.

A source's `[source.columns]` names, for each staging field, the column header that holds it; `[source.formats]`
gives strptime formats for dates; `[source.code_systems]` the code system of each code field (staged in
`<field>_system`). Rows go to `stg_csv_<system>` (e.g. `stg_csv_pharmacy`). A row that cannot be decoded, has the
wrong number of fields, lacks a required value or holds a value that does not parse is rejected with its line
number; the rest of the file goes on.
"""
from __future__ import annotations

import csv
import datetime as dt
import math
import re
from typing import BinaryIO, Iterator

import pyarrow as pa

from medlake.sources.records import Loc, Rejected, Staged, ident

# Staging fields per system: field -> type (string | float | integer | date | datetime).
FIELDS: dict[str, dict[str, str]] = {
    "pharmacy": {
        "record_id": "string", "patient_id": "string", "visit_id": "string", "drug_code": "string",
        "drug_name": "string", "quantity": "float", "quantity_unit": "string", "days_supply": "integer",
        "route": "string", "dispensed_at": "datetime",
    },
}
REQUIRED: dict[str, tuple[str, ...]] = {"pharmacy": ("record_id", "patient_id", "drug_code", "dispensed_at")}
IDENTIFYING: dict[str, set[str]] = {"pharmacy": {"patient_id"}}  # the MRN
CODE_FIELDS: dict[str, tuple[str, ...]] = {"pharmacy": ("drug_code",)}
ARROW = {"string": pa.string(), "float": pa.float64(), "integer": pa.int64(), "date": pa.date32(),
         "datetime": pa.timestamp("us")}
csv.field_size_limit(1 << 24)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # \d: full-width digits (１２) too
_WHOLE = re.compile(r"[+-]?\d+(\.0*)?")


def fields_for(system: str | None) -> dict[str, str] | None:
    return FIELDS.get(system or "")


def table_name(system: str) -> str:
    return f"stg_csv_{system}"


def _schema(system: str) -> pa.Schema:
    out = []
    for f, t in FIELDS[system].items():
        out.append(ident(f, ARROW[t]) if f in IDENTIFYING[system] else pa.field(f, ARROW[t]))
        if f in CODE_FIELDS[system]:
            out.append(pa.field(f"{f}_system", pa.string()))
    out.append(pa.field("line", pa.int64()))
    return pa.schema(out)


STAGING_SCHEMAS: dict[str, pa.Schema] = {table_name(s): _schema(s) for s in FIELDS}


def _lines(stream: BinaryIO, encoding: str, bad: dict[int, str], raw: dict[int, bytes]) -> Iterator[str]:
    """Decoded physical lines; a line that does not decode is noted in `bad` and yielded with replacements."""
    for n, b in enumerate(stream, 1):
        if n == 1 and b.startswith(b"\xef\xbb\xbf"):
            b = b[3:]
        raw[n] = b
        try:
            yield b.decode(encoding)
        except UnicodeDecodeError as e:
            bad[n] = f"byte {e.start} of the line is not valid {encoding} ({b[e.start:e.start + 4]!r})"
            yield b.decode(encoding, errors="replace")


class _TooLarge(ValueError):
    """A whole number beyond the staging column's 64-bit integer."""


def _value(text: str, kind: str, fmt: str | None):
    if kind == "string":
        return text
    if kind in ("float", "integer"):
        if not _NUMBER.fullmatch(text):  # float() also reads nan, inf and 1_000
            raise ValueError(text)
        v = float(text)
        if not math.isfinite(v):
            raise ValueError(text)
        if kind == "float":
            return v
        if not _WHOLE.fullmatch(text):  # 30.0: how pandas writes a whole number in a column with gaps
            raise ValueError(text)
        n = int(text.split(".")[0])
        if not -2**63 <= n < 2**63:
            raise _TooLarge(text)
        return n
    if kind == "date":
        return dt.datetime.strptime(text, fmt).date() if fmt else dt.date.fromisoformat(text)
    v = dt.datetime.strptime(text, fmt) if fmt else dt.datetime.fromisoformat(text)
    return v.replace(tzinfo=None)


def read(stream: BinaryIO, name: str, source) -> Iterator[Staged | Rejected]:
    """Records of one CSV file for a csv `Source` (see sources.config)."""
    system = source.system
    fields = FIELDS.get(system or "")
    if fields is None:
        yield Rejected(Loc(name), "no_mapping", f"no staging fields are defined for system {system!r} "
                       f"(known: {', '.join(FIELDS)}); declare the source with a known system")
        return
    table = table_name(system)
    bad: dict[int, str] = {}
    raw: dict[int, bytes] = {}
    reader = csv.reader(_lines(stream, source.encoding, bad, raw), delimiter=source.delimiter,
                        quotechar=source.quotechar)
    prev = 0
    header = None
    while True:
        try:
            rec, error = next(reader), None
        except StopIteration:
            break
        except csv.Error as e:  # the reader goes on at the next line
            rec, error = None, ("a carriage return (CR) inside a field that is not quoted: quote the field or remove "
                                "the CR" if "new-line character" in str(e) else f"not readable as CSV ({e})")
        first, last = prev + 1, reader.line_num
        prev = last
        if header is None and first <= source.skip_rows:
            continue
        lines_raw = b"".join(raw.pop(n, b"") for n in range(first, last + 1))
        if error:
            if header is None:
                yield Rejected(Loc(name, line=first, whole=True), "malformed", f"the header: {error}", lines_raw)
                return
            yield Rejected(Loc(name, line=first), "malformed", error, lines_raw)
            continue
        if not rec or (len(rec) == 1 and not rec[0].strip()):
            continue
        if header is None:
            header = [h.strip() for h in rec]
            missing = [f"{f} → {c!r}" for f, c in source.columns.items() if c not in header]
            if missing:
                yield Rejected(Loc(name, line=first, field=missing[0].split(" → ")[1].strip("'"), whole=True),
                               "missing_column",
                               f"column(s) named in the source mapping are not in the header: {', '.join(missing)}; "
                               f"header is {header}; fix [source.columns] and retry", lines_raw)
                return
            index = {f: header.index(c) for f, c in source.columns.items()}
            continue
        loc = Loc(name, line=first)
        rid = index.get("record_id")
        if rid is not None and rid < len(rec) and rec[rid].strip():
            loc.message_id = rec[rid].strip()
        badline = next((n for n in range(first, last + 1) if n in bad), None)
        if badline is not None:
            yield Rejected(loc, "wrong_encoding", f"line {badline}: {bad.pop(badline)}; the source declares "
                           f"encoding {source.encoding!r}", lines_raw)
            continue
        if len(rec) != len(header):
            yield Rejected(loc, "malformed" if len(rec) > len(header) else "truncated",
                           f"row has {len(rec)} field(s), the header has {len(header)}", lines_raw)
            continue
        row: dict = {}
        problem = None
        for f, i in index.items():
            text = rec[i].strip()
            if not text:
                if f in REQUIRED[system]:
                    problem = ("missing_mandatory", header[i], f"required field {f} (column {header[i]!r}) is empty")
                    break
                row[f] = None
                continue
            fmt = source.formats.get(f)
            try:
                row[f] = _value(text, fields[f], fmt)
            except ValueError as e:
                want = ("a whole number a 64-bit integer holds (at most 9,223,372,036,854,775,807 either way)"
                        if isinstance(e, _TooLarge) else f"format {fmt!r}" if fmt else
                        {"float": "a number", "integer": "a whole number", "date": "an ISO date",
                         "datetime": "an ISO datetime"}[fields[f]])
                problem = ("invalid", header[i], f"{f} (column {header[i]!r}) = {text!r} is not {want}")
                break
        if problem:
            loc.field = problem[1]
            yield Rejected(loc, problem[0], problem[2], lines_raw)
            continue
        for f in CODE_FIELDS[system]:
            row[f"{f}_system"] = source.code_systems.get(f)
        row["line"] = first
        yield Staged(loc, {table: [row]})
