"""Landing: every received message or file, kept as it came, content-addressed, append-only.

One SQLite file (`landing.sqlite`, WAL, synchronous=FULL) holds the receipts (provenance of every receipt,
duplicates included and flagged) and the objects (raw bytes by sha256). Objects larger than
`INLINE_LIMIT` are files under `objects/` (written to a temporary name, fsynced, renamed), referenced from
the database. `put_many` stores a group of items in one transaction: one durable commit for the group,
which is how the MLLP listener acknowledges many messages per fsync.

Nothing here is ever updated or deleted: triggers refuse it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

INLINE_LIMIT = 4 << 20  # bytes kept inside the database; larger objects are files
CHUNK = 1 << 20

SCHEMA = """
CREATE TABLE IF NOT EXISTS object (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    data BLOB,            -- inline content, or NULL when stored as a file
    path TEXT             -- relative path under the landing folder when stored as a file
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipt (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL REFERENCES object(sha256),
    source TEXT NOT NULL,
    received_at TEXT NOT NULL,
    batch TEXT,
    original_name TEXT,
    size INTEGER NOT NULL,
    duplicate INTEGER NOT NULL   -- 1 when this source had already landed this content
);
CREATE INDEX IF NOT EXISTS receipt_source ON receipt(source, sha256);
CREATE TRIGGER IF NOT EXISTS object_no_update BEFORE UPDATE ON object
    BEGIN SELECT RAISE(ABORT, 'landing is append-only'); END;
CREATE TRIGGER IF NOT EXISTS object_no_delete BEFORE DELETE ON object
    BEGIN SELECT RAISE(ABORT, 'landing is append-only'); END;
CREATE TRIGGER IF NOT EXISTS receipt_no_update BEFORE UPDATE ON receipt
    BEGIN SELECT RAISE(ABORT, 'landing is append-only'); END;
CREATE TRIGGER IF NOT EXISTS receipt_no_delete BEFORE DELETE ON receipt
    BEGIN SELECT RAISE(ABORT, 'landing is append-only'); END;
"""


@dataclass(frozen=True)
class Item:
    data: bytes
    source: str
    original_name: str | None = None
    batch: str | None = None


@dataclass(frozen=True)
class Receipt:
    seq: int
    sha256: str
    source: str
    received_at: str
    batch: str | None
    original_name: str | None
    size: int
    duplicate: bool


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Landing:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.root / "landing.sqlite", check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()

    # -- writing ---------------------------------------------------------------------------------------
    def put(self, data: bytes, source: str, original_name: str | None = None, batch: str | None = None) -> Receipt:
        return self.put_many([Item(data, source, original_name, batch)])[0]

    def put_many(self, items: Iterable[Item]) -> list[Receipt]:
        """Land a group of items durably, in one transaction; returns one receipt per item, in order.

        Set-based: one lookup of what each source already holds, one insert of objects, one of receipts.
        """
        items = list(items)
        if not items:
            return []
        at = now()
        digests = [sha256(it.data) for it in items]
        big = [(i, d) for i, (it, d) in enumerate(zip(items, digests)) if len(it.data) > INLINE_LIMIT]
        files = {d: self._write_object(items[i].data, d) for i, d in big}
        with self.lock:
            cur = self.db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                keys = sorted({(it.source, d) for it, d in zip(items, digests)})
                held = set()
                for start in range(0, len(keys), 400):
                    part = keys[start:start + 400]
                    cond = " OR ".join("(source = ? AND sha256 = ?)" for _ in part)
                    held.update(cur.execute(f"SELECT DISTINCT source, sha256 FROM receipt WHERE duplicate = 0 "
                                            f"AND ({cond})", [v for k in part for v in k]).fetchall())
                cur.executemany("INSERT OR IGNORE INTO object (sha256, size, data, path) VALUES (?, ?, ?, ?)",
                                [(d, len(it.data), None if d in files else it.data, files.get(d))
                                 for it, d in zip(items, digests)])
                rows = []
                for it, d in zip(items, digests):
                    dup = (it.source, d) in held
                    held.add((it.source, d))
                    rows.append((d, it.source, at, it.batch, it.original_name, len(it.data), int(dup)))
                first = cur.execute("SELECT coalesce(max(seq), 0) FROM receipt").fetchone()[0]
                cur.executemany("INSERT INTO receipt (sha256, source, received_at, batch, original_name, size, "
                                "duplicate) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return [Receipt(first + i + 1, r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for i, r in enumerate(rows)]

    def _write_object(self, data: bytes, digest: str) -> str:
        """Write a large object as a file (temporary name, fsync, rename); return its relative path."""
        rel = Path("objects") / digest[:2] / digest
        final = self.root / rel
        if not final.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_suffix(f".tmp-{os.getpid()}-{threading.get_ident()}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        return rel.as_posix()

    def put_file(self, path: str | Path, source: str, batch: str | None = None,
                 original_name: str | None = None) -> Receipt:
        """Land a file, streamed: hashed while copied, never read whole into memory."""
        path = Path(path)
        size = path.stat().st_size
        name = original_name or path.name
        if size <= INLINE_LIMIT:
            return self.put(path.read_bytes(), source, name, batch)
        tmp = self.root / "objects" / f".incoming-{os.getpid()}-{threading.get_ident()}"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        digest = h.hexdigest()
        rel = Path("objects") / digest[:2] / digest
        final = self.root / rel
        if final.exists():
            tmp.unlink()
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        with self.lock:
            cur = self.db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                r = self._land(cur, source, digest, size, now(), batch, name, file=rel.as_posix())
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return r

    def _land(self, cur, source, digest, size, at, batch, name, file: str) -> Receipt:
        cur.execute("INSERT OR IGNORE INTO object (sha256, size, data, path) VALUES (?, ?, NULL, ?)",
                    (digest, size, file))
        dup = cur.execute("SELECT 1 FROM receipt WHERE source = ? AND sha256 = ? AND duplicate = 0 LIMIT 1",
                          (source, digest)).fetchone() is not None
        cur.execute(
            "INSERT INTO receipt (sha256, source, received_at, batch, original_name, size, duplicate) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", (digest, source, at, batch, name, size, int(dup)))
        return Receipt(cur.lastrowid, digest, source, at, batch, name, size, dup)

    # -- reading -----------------------------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        return self.db.execute("SELECT 1 FROM object WHERE sha256 = ?", (digest,)).fetchone() is not None

    def get(self, digest: str) -> bytes:
        row = self.db.execute("SELECT data, path FROM object WHERE sha256 = ?", (digest,)).fetchone()
        if row is None:
            raise KeyError(f"no landed object {digest}")
        return row[0] if row[1] is None else (self.root / row[1]).read_bytes()

    def open(self, digest: str) -> BinaryIO:
        """A binary stream of an object (large objects are not read whole)."""
        import io

        row = self.db.execute("SELECT data, path FROM object WHERE sha256 = ?", (digest,)).fetchone()
        if row is None:
            raise KeyError(f"no landed object {digest}")
        return io.BytesIO(row[0]) if row[1] is None else open(self.root / row[1], "rb")

    def receipts(self, source: str | None = None, after_seq: int = 0,
                 include_duplicates: bool = False) -> Iterator[Receipt]:
        sql = "SELECT seq, sha256, source, received_at, batch, original_name, size, duplicate FROM receipt " \
              "WHERE seq > ?"
        args: list = [after_seq]
        if source is not None:
            sql += " AND source = ?"
            args.append(source)
        if not include_duplicates:
            sql += " AND duplicate = 0"
        for row in self.db.execute(sql + " ORDER BY seq", args):
            yield Receipt(*row[:7], bool(row[7]))

    def counts(self, source: str | None = None) -> dict[str, int]:
        """received, landed (new content) and duplicates, overall or for one source."""
        where, args = ("WHERE source = ?", [source]) if source else ("", [])
        r = self.db.execute(f"SELECT count(*), coalesce(sum(duplicate), 0) FROM receipt {where}", args).fetchone()
        return {"received": r[0], "landed": r[0] - r[1], "duplicates": r[1]}

    def close(self) -> None:
        self.db.close()
