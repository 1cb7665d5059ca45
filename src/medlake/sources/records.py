"""What every source reader yields: records staged into rows, or records rejected with a location and reason.

A reader never raises for bad input: each message, resource or row comes out either as `Staged` (rows per
staging table) or as `Rejected` (where, why, the raw bytes). Ingest writes the first to staging and the second
to quarantine.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

IDENTIFYING = {b"identifying": b"true"}


def ident(name: str, type_: pa.DataType = pa.string()) -> pa.Field:
    """A staging column holding a direct identifier (name, ID number, phone, address, birth date)."""
    return pa.field(name, type_, metadata=IDENTIFYING)


def is_identifying(f: pa.Field) -> bool:
    return bool(f.metadata) and f.metadata.get(b"identifying") == b"true"


@dataclass
class Loc:
    """Where a record sits: file, line (1-based) or byte offset, message id, segment/field or JSON path."""
    file: str | None = None
    line: int | None = None
    offset: int | None = None
    message_id: str | None = None
    field: str | None = None
    whole: bool = False  # the problem is the whole file (e.g. its JSON does not parse); line/offset say where

    def key(self) -> str:
        """A stable key for the record within its file (the field is not part of it)."""
        if self.whole or self.line is None and self.offset is None and self.message_id is None and not self.path_part():
            return "file"
        parts = []
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.offset is not None:
            parts.append(f"byte {self.offset}")
        if p := self.path_part():
            parts.append(p)
        return " ".join(parts) or f"id {self.message_id}"

    def path_part(self) -> str | None:
        """For bundles the record is named by its entry path (`Bundle.entry[3]`), kept in `field` up to `.resource`."""
        if self.field and self.field.startswith("Bundle.entry["):
            return self.field.split("]", 1)[0] + "]"
        return None

    def __str__(self) -> str:
        parts = [self.file or "?"]
        if self.line is not None:   # a Parquet file has rows, no lines (`cdm import` sets its bad rows aside)
            parts.append(f"{'row' if (self.file or '').lower().endswith('.parquet') else 'line'} {self.line}")
        if self.offset is not None:
            parts.append(f"byte {self.offset}")
        if self.message_id:
            parts.append(f"id {self.message_id}")
        if self.field:
            parts.append(f"at {self.field}")
        return ", ".join(parts)


@dataclass
class Staged:
    loc: Loc
    rows: dict[str, list[dict]] = field(default_factory=dict)


@dataclass
class Rejected:
    loc: Loc
    reason: str  # a short class: malformed, invalid, bad_json, truncated, bad_encoding, missing_column, …
    detail: str  # what is wrong and what to do, one line
    raw: bytes = b""
