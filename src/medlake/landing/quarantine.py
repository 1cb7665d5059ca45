"""Quarantine: every message, resource or row that could not be staged, with where it was and why.

Kept beside landing, in its own SQLite file (`<landing root>/quarantine.sqlite`, WAL, synchronous=FULL), because
unlike landing its items change state: `open` until a retry stages them, then `resolved` (with when and how).
Nothing is ever deleted (a trigger refuses it). An item is keyed by (source, landing sha256, location key), so
processing the same landed object twice never files it twice.
"""
from __future__ import annotations

import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from medlake.landing.store import now
from medlake.sources.records import Loc, Rejected

SCHEMA = """
CREATE TABLE IF NOT EXISTS item (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    receipt_seq INTEGER NOT NULL,
    landing_sha256 TEXT NOT NULL,
    loc_key TEXT NOT NULL,        -- the record within its landed object: "line 12", "Bundle.entry[3]", "file"
    file TEXT,                    -- original name
    line INTEGER,
    byte_offset INTEGER,
    message_id TEXT,              -- HL7 MSH-10, FHIR resource id, CSV record id
    field TEXT,                   -- HL7 segment/field, FHIR JSON path, CSV column
    reason TEXT NOT NULL,         -- a short class: malformed, invalid, missing_mandatory, bad_json, truncated, …
    detail TEXT NOT NULL,
    raw BLOB NOT NULL,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',   -- open | resolved
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    resolved_at TEXT,
    resolution TEXT,
    UNIQUE (source, landing_sha256, loc_key)
);
CREATE INDEX IF NOT EXISTS item_status ON item(status, source);
CREATE TRIGGER IF NOT EXISTS item_no_delete BEFORE DELETE ON item
    BEGIN SELECT RAISE(ABORT, 'quarantine items are never deleted; mark them resolved'); END;
"""
COLUMNS = ("id", "source", "receipt_seq", "landing_sha256", "loc_key", "file", "line", "byte_offset", "message_id",
           "field", "reason", "detail", "raw", "created_at", "status", "attempts", "last_error", "resolved_at",
           "resolution")


@dataclass(frozen=True)
class Item:
    id: int
    source: str
    receipt_seq: int
    landing_sha256: str
    loc_key: str
    file: str | None
    line: int | None
    byte_offset: int | None
    message_id: str | None
    field: str | None
    reason: str
    detail: str
    raw: bytes
    created_at: str
    status: str
    attempts: int
    last_error: str | None
    resolved_at: str | None
    resolution: str | None

    @property
    def loc(self) -> Loc:
        return Loc(self.file, self.line, self.byte_offset, self.message_id, self.field)

    @property
    def location(self) -> str:
        return str(self.loc)


class Quarantine:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.root / "quarantine.sqlite", check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()

    def add_many(self, source: str, receipt_seq: int, sha: str, rejected: Iterable[Rejected],
                 keys: list[str] | None = None) -> int:
        """File rejected records of one landed object (one transaction); returns how many were new.

        A record filed before and since resolved, that fails again (say, after a replay with an older parser),
        is reopened rather than filed twice.
        """
        at = now()
        rejected = list(rejected)
        keys = keys or [r.loc.key() for r in rejected]
        rows = [(source, receipt_seq, sha, k, r.loc.file, r.loc.line, r.loc.offset, r.loc.message_id,
                 r.loc.field, r.reason, r.detail[:2000], bytes(r.raw), at) for r, k in zip(rejected, keys)]
        if not rows:
            return 0
        with self.lock:
            before = self.db.total_changes
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(
                    "INSERT INTO item (source, receipt_seq, landing_sha256, loc_key, file, line, byte_offset, "
                    "message_id, field, reason, detail, raw, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (source, landing_sha256, loc_key) DO UPDATE SET status = 'open', "
                    "last_error = excluded.detail WHERE item.status = 'resolved'", rows)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            return self.db.total_changes - before

    def items(self, source: str | None = None, status: str | None = "open", reason: str | None = None,
              ids: Iterable[int] | None = None, limit: int | None = None) -> list[Item]:
        sql, args = f"SELECT {', '.join(COLUMNS)} FROM item WHERE 1=1", []
        for col, v in (("source", source), ("status", status), ("reason", reason)):
            if v is not None:
                sql += f" AND {col} = ?"
                args.append(v)
        if ids is not None:
            ids = list(ids)
            sql += f" AND id IN ({', '.join('?' * len(ids))})"
            args += ids
        sql += " ORDER BY id" + (f" LIMIT {int(limit)}" if limit else "")
        return [Item(*r) for r in self.db.execute(sql, args)]

    def naming(self, ids: Iterable[str], status: str | None = "open") -> list[Item]:
        """Items whose raw record carries one of these ids (a patient's MRN or FHIR id) as a whole token: not as part
        of a longer id (`P-12` is not in `P-123`). A record broken before its id is not found."""
        ids = [i for i in dict.fromkeys(ids) if i]
        if not ids:
            return []
        sql = (f"SELECT {', '.join(COLUMNS)} FROM item WHERE ({' OR '.join(['instr(raw, ?) > 0'] * len(ids))})"
               + (" AND status = ?" if status is not None else "") + " ORDER BY id")
        args = [i.encode() for i in ids] + ([status] if status is not None else [])
        token = re.compile(rb"(?<![A-Za-z0-9_-])(?:" + b"|".join(re.escape(i.encode()) for i in ids)
                           + rb")(?![A-Za-z0-9_-])")
        return [x for x in (Item(*r) for r in self.db.execute(sql, args)) if token.search(x.raw)]

    def get(self, item_id: int) -> Item:
        got = self.items(status=None, ids=[item_id])
        if not got:
            raise KeyError(f"no quarantine item {item_id}: see `medlake quarantine list`")
        return got[0]

    def resolve(self, item_id: int, resolution: str) -> None:
        with self.lock:
            self.db.execute("UPDATE item SET status = 'resolved', resolved_at = ?, resolution = ?, "
                            "attempts = attempts + 1 WHERE id = ?", (now(), resolution, item_id))

    def failed_again(self, item_id: int, error: str, field: str | None = None) -> None:
        """A retry failed: its error, and the field it names (the location says where it fails now)."""
        with self.lock:
            self.db.execute("UPDATE item SET attempts = attempts + 1, last_error = ?, field = coalesce(?, field) "
                            "WHERE id = ?", (error, field, item_id))

    def counts(self, source: str | None = None, status: str | None = "open") -> dict[str, int]:
        """Items by reason."""
        sql, args = "SELECT reason, count(*) FROM item WHERE 1=1", []
        if source is not None:
            sql += " AND source = ?"
            args.append(source)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        return dict(self.db.execute(sql + " GROUP BY reason ORDER BY reason", args).fetchall())

    def close(self) -> None:
        self.db.close()
