"""The identity vault: identifying values of every source identity, encrypted, in their own SQLite file.

Layout (`<data_dir>/identity/vault.sqlite`):
- `identity`: one row per (source, source_id) with plain routing columns (hospital, system, id_type) and one
  AES-GCM ciphertext per identifying value (`normalize.FIELDS`), bound to its row and field by the associated
  data; `key_id` names the key all of the row's values are encrypted with; `as_of` the time of the message each
  value came from, so an older one does not replace it (`put`): JSON, encrypted as the values are (a vault of
  before 2026-12-05 holds it in plain text until the row is written again or `rotate` passes).
- `blocking_key`: HMAC-ed blocking keys (no plaintext) for candidate search.
- `secret`: the vault's own secrets (matching HMAC secret, pseudonym site secret), encrypted like the values.
- `staging_read`: per staging table and source, the last receipt whose identities the vault holds; values the
  store moved from later receipts and no longer holds are missing from it (a vault older than the store:
  `staging.vault_staging` refuses, `staging.missing_in_vault` lists them).
- `access_log`: every plaintext read and every re-identification: who, role, when, why, what. Append-only
  (triggers refuse UPDATE and DELETE) and hash-chained, so a removed or edited row shows in `verify_log()`.

SQLite in WAL mode lets other processes read and write while a key rotation runs batch by batch.
"""
from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Callable, Iterable

from medlake.identity import keys as keys_mod
from medlake.identity.normalize import BLOCKING_KINDS, FIELDS, blocking_keys, comparison_values

SCHEMA = """
CREATE TABLE IF NOT EXISTS secret (name TEXT PRIMARY KEY, key_id TEXT NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS identity (
  source TEXT NOT NULL, source_id TEXT NOT NULL, hospital TEXT, system TEXT, id_type TEXT,
  key_id TEXT NOT NULL, updated_at TEXT NOT NULL, {fields}, as_of TEXT,
  PRIMARY KEY (source, source_id));
CREATE INDEX IF NOT EXISTS identity_key ON identity (key_id);
CREATE TABLE IF NOT EXISTS blocking_key (
  source TEXT NOT NULL, source_id TEXT NOT NULL, {kinds},
  PRIMARY KEY (source, source_id));
CREATE TABLE IF NOT EXISTS staging_read (
  stg_table TEXT NOT NULL, source TEXT NOT NULL, receipt_seq INTEGER NOT NULL, PRIMARY KEY (stg_table, source));
CREATE TABLE IF NOT EXISTS access_log (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, who TEXT NOT NULL, role TEXT, why TEXT NOT NULL,
  what TEXT NOT NULL, rows INTEGER NOT NULL, granted INTEGER NOT NULL DEFAULT 1, prev TEXT NOT NULL,
  hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS access_log_no_update BEFORE UPDATE ON access_log
  BEGIN SELECT RAISE(ABORT, 'access_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS access_log_no_delete BEFORE DELETE ON access_log
  BEGIN SELECT RAISE(ABORT, 'access_log is append-only'); END;
""".format(fields=", ".join(f"{f} BLOB" for f in FIELDS), kinds=", ".join(f"bk_{k} TEXT" for k in BLOCKING_KINDS))


class VaultError(ValueError):
    """The vault cannot do what was asked; the message says what and what to do."""


PLAIN = ("hospital", "system", "id_type")  # an identity's routing columns, not encrypted


def default_user() -> str:
    try:
        return os.environ.get("MEDLAKE_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def vault_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "identity" / "vault.sqlite"


def _aad(source: str, source_id: str, field: str) -> bytes:
    return f"{source}\x1f{source_id}\x1f{field}".encode()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


class Vault:
    def __init__(self, path: str | Path, keyring: keys_mod.KeyRing | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keys = keyring or keys_mod.load()
        self.con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA secure_delete=ON")  # freed pages are zeroed: no stale ciphertext or log text
        self.con.executescript(SCHEMA)
        if "as_of" not in {r[1] for r in self.con.execute("PRAGMA table_info(identity)")}:  # a vault of before 2026-12
            self.con.execute("ALTER TABLE identity ADD COLUMN as_of TEXT")
        self._secrets: dict[str, bytes] = {}

    @classmethod
    def open(cls, data_dir: str | Path, keyring: keys_mod.KeyRing | None = None) -> "Vault":
        return cls(vault_path(data_dir), keyring)

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- secrets -------------------------------------------------------------------------------------------
    def secret(self, name: str) -> bytes:
        """A 32-byte vault secret (created on first use), stable across key rotations."""
        if name not in self._secrets:
            row = self.con.execute("SELECT blob FROM secret WHERE name = ?", [name]).fetchone()
            if row is None:
                self.con.execute("INSERT OR IGNORE INTO secret VALUES (?, ?, ?)",
                                 [name, self.keys.active_id, self.keys.encrypt(os.urandom(32), _aad("secret", name, ""))])
                row = self.con.execute("SELECT blob FROM secret WHERE name = ?", [name]).fetchone()
            self._secrets[name] = self._decrypt(row[0], _aad("secret", name, ""))
        return self._secrets[name]

    def _as_of_blob(self, source: str, source_id: str, at: dict) -> bytes | None:
        """A row's `as_of` as stored: its JSON encrypted under the active key, bound to the row."""
        return self.keys.encrypt(json.dumps(at, sort_keys=True).encode(), _aad(source, source_id, "as_of")) \
            if at else None

    def _as_of(self, source: str, source_id: str, stored) -> dict:
        """A row's `as_of` as `put` compares it (a vault of before 2026-12-05 stored the JSON in plain text)."""
        if stored is None or stored == "":
            return {}
        if isinstance(stored, str):
            return json.loads(stored)
        return json.loads(self._decrypt(stored, _aad(source, source_id, "as_of")))

    def _decrypt(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return self.keys.decrypt(blob, aad)
        except keys_mod.VaultKeyError:
            raise
        except Exception as e:  # cryptography's InvalidTag: wrong key or tampered value
            raise VaultError(f"{self.path}: a value does not decrypt (wrong key for id "
                             f"{keys_mod.KeyRing.blob_key_id(blob)}, or the vault was altered): {type(e).__name__}") from e

    # -- writing -------------------------------------------------------------------------------------------
    def put(self, identities: Iterable[dict], who: str = "vault", merge: bool = True) -> list[dict]:
        """Insert or update source identities: dicts with source, source_id, hospital, system, id_type, any of
        `FIELDS`, and optionally `as_of` ({field or routing column: text that sorts by time}, `staging.as_of`).
        With `merge` (the default) a field given as empty keeps the value already in the vault (staging of a later
        message may carry fewer fields), and so does a field whose stored value is of a later `as_of` than the one
        given (a run that brings an older message); that update decrypts the stored row, which is logged. A field
        given as empty *with* an `as_of` was removed at that time (a FHIR Patient version without it): the stored
        value goes unless it is newer, and the time stays, so an older value does not come back.
        Values are encrypted; keyed blocking keys are derived. One transaction. Returns the records as stored
        (plaintext, in this process only)."""
        match = self.secret("matching")
        now = _now()
        recs = {}
        for rec in identities:
            src, sid = rec.get("source"), rec.get("source_id")
            if not src or sid is None or str(sid) == "":
                raise VaultError(f"identity without source/source_id: fields {sorted(k for k in rec if rec[k])}")
            recs[(str(src), str(sid))] = rec
        old, old_as_of = {}, {}
        if merge and recs:
            for k in recs:
                row = self.con.execute("SELECT as_of FROM identity WHERE source = ? AND source_id = ?",
                                       list(k)).fetchone()
                if row is not None:
                    old_as_of[k] = self._as_of(*k, row[0])
            if old_as_of:
                why = "update identities (keep fields the update leaves empty or has older)"
                old = {(r["source"], r["source_id"]): r for r in self.read(who, why, list(old_as_of))}
        rows, bks, out = [], [], []
        for (src, sid), rec in recs.items():
            prev, was, given = old.get((src, sid), {}), old_as_of.get((src, sid), {}), rec.get("as_of") or {}
            vals, at = {}, {}
            for f in (*PLAIN, *FIELDS):
                v = None if rec.get(f) in (None, "") else str(rec[f])
                said = v is not None or f in given  # a value, or with a time that there is none (it was removed)
                new = said and (f not in given or f not in was or given[f] >= was[f])
                vals[f], when = (v, given.get(f)) if new else (prev.get(f), was.get(f))
                if when is not None:
                    at[f] = when
            plain = {c: vals.pop(c) for c in PLAIN}
            rows.append([src, sid, *plain.values(), self.keys.active_id, now]
                        + [None if v is None else self.keys.encrypt(v.encode(), _aad(src, sid, f)) for f, v in vals.items()]
                        + [self._as_of_blob(src, sid, at)])
            bk = blocking_keys(match, comparison_values({**vals, "hospital": plain["hospital"]}))
            bks.append([src, sid] + [bk[k] for k in BLOCKING_KINDS])
            out.append({"source": src, "source_id": sid, **plain, **vals})
        cols = ", ".join(["source", "source_id", *PLAIN, "key_id", "updated_at", *FIELDS, "as_of"])
        with self._tx():
            self.con.executemany(f"INSERT OR REPLACE INTO identity ({cols}) VALUES ({', '.join('?' * (8 + len(FIELDS)))})",
                                 rows)
            self.con.executemany(f"INSERT OR REPLACE INTO blocking_key VALUES ({', '.join('?' * (2 + len(BLOCKING_KINDS)))})",
                                 bks)
        return out

    class _Tx:
        def __init__(self, con):
            self.con = con

        def __enter__(self):
            self.con.execute("BEGIN IMMEDIATE")

        def __exit__(self, et, e, tb):
            self.con.execute("ROLLBACK" if et else "COMMIT")

    def _tx(self):
        return Vault._Tx(self.con)

    def set_read(self, marks: Iterable[tuple[str, str, int]]) -> None:
        """After a `put` of what staging held up to them: (staging table, source, last receipt) the vault holds."""
        with self._tx():
            self.con.executemany("INSERT OR REPLACE INTO staging_read VALUES (?, ?, ?)", list(marks))

    # -- reading -------------------------------------------------------------------------------------------
    def read_up_to(self) -> dict[tuple[str, str], int]:
        """{(staging table, source): last receipt} whose identities the vault holds (`set_read`); empty for a new
        vault and for one written before 2026-12-06."""
        return {(t, s): n for t, s, n in self.con.execute("SELECT stg_table, source, receipt_seq FROM staging_read")}

    def count(self) -> int:
        return self.con.execute("SELECT count(*) FROM identity").fetchone()[0]

    def keys_of(self) -> list[tuple[str, str]]:
        return self.con.execute("SELECT source, source_id FROM identity ORDER BY 1, 2").fetchall()

    def blocking(self) -> list[dict]:
        """Keyed blocking keys per identity (no plaintext; not logged)."""
        cur = self.con.execute("SELECT * FROM blocking_key ORDER BY source, source_id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur]

    def read(self, who: str, why: str, keys: list[tuple[str, str]] | None = None, fields: Iterable[str] = FIELDS,
             role: str | None = None) -> list[dict]:
        """Plaintext identities (all, or the given (source, source_id) keys). Logged before anything is returned."""
        fields = [f for f in fields if f in FIELDS]
        if not who or not why:
            raise VaultError("a plaintext read needs who and why (for the access log)")
        sel = f"SELECT source, source_id, hospital, system, id_type, {', '.join(fields)} FROM identity"
        if keys is None:
            what = f"all identities; fields {','.join(fields)}"
            raw = self.con.execute(sel + " ORDER BY source, source_id").fetchall()
        else:
            what = f"{len(keys)} identit{'y' if len(keys) == 1 else 'ies'} " + ";".join(f"{s}:{i}" for s, i in keys[:20]) \
                + (" …" if len(keys) > 20 else "") + f"; fields {','.join(fields)}"
            raw = []
            for s, i in keys:
                raw += self.con.execute(sel + " WHERE source = ? AND source_id = ?", [s, str(i)]).fetchall()
        self.log(who, why, what, len(raw), role=role)
        out = []
        for r in raw:
            rec = {"source": r[0], "source_id": r[1], "hospital": r[2], "system": r[3], "id_type": r[4]}
            for f, blob in zip(fields, r[5:]):
                rec[f] = None if blob is None else self._decrypt(blob, _aad(r[0], r[1], f)).decode()
            out.append(rec)
        return out

    # -- access log ----------------------------------------------------------------------------------------
    def log(self, who: str, why: str, what: str, rows: int, role: str | None = None, granted: bool = True) -> None:
        with self._tx():
            prev = self.con.execute("SELECT hash FROM access_log ORDER BY seq DESC LIMIT 1").fetchone()
            prev = prev[0] if prev else "0" * 64
            at = _now()
            h = hashlib.sha256(json.dumps([prev, at, who, role, why, what, rows, int(granted)]).encode()).hexdigest()
            self.con.execute("INSERT INTO access_log (at, who, role, why, what, rows, granted, prev, hash) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [at, who, role, why, what, rows, int(granted), prev, h])

    def access_log(self) -> list[dict]:
        cur = self.con.execute("SELECT * FROM access_log ORDER BY seq")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur]

    def verify_log(self) -> list[str]:
        """Problems in the hash chain (empty when intact)."""
        problems, prev = [], "0" * 64
        for r in self.access_log():
            h = hashlib.sha256(json.dumps([r["prev"], r["at"], r["who"], r["role"], r["why"], r["what"], r["rows"],
                                           r["granted"]]).encode()).hexdigest()
            if r["prev"] != prev or r["hash"] != h:
                problems.append(f"access_log row {r['seq']} does not chain")
            prev = r["hash"]
        return problems

    # -- key rotation --------------------------------------------------------------------------------------
    def key_status(self) -> dict[str, int]:
        """Rows (identities and secrets) per key id."""
        out: dict[str, int] = {}
        for t in ("identity", "secret"):
            for k, n in self.con.execute(f"SELECT key_id, count(*) FROM {t} GROUP BY 1"):
                out[k] = out.get(k, 0) + n
        return out

    _STALE = "key_id <> ? OR typeof(as_of) = 'text'"  # the identity rows `rotate` re-encrypts

    def to_rotate(self) -> int:
        """Rows `rotate` would re-encrypt now: secrets and identities under another key than the active one, and
        identities whose `as_of` is still plain text."""
        new = self.keys.active_id
        return (self.con.execute("SELECT count(*) FROM secret WHERE key_id <> ?", [new]).fetchone()[0]
                + self.con.execute(f"SELECT count(*) FROM identity WHERE {self._STALE}", [new]).fetchone()[0])

    def rotate(self, batch: int = 1000, between: Callable[[int], None] | None = None) -> int:
        """Re-encrypt every value not under the active key (and a row's `as_of` still in plain text, as a vault of
        before 2026-12-05 has it), `batch` rows per short transaction. Readers and
        writers go on meanwhile (old keys stay readable); a row changed by someone else during a batch is left
        for the next batch. Safe to interrupt and run again. Returns the number of rows re-encrypted."""
        new = self.keys.active_id
        done = 0
        for name, kid, blob in self.con.execute("SELECT name, key_id, blob FROM secret WHERE key_id <> ?", [new]).fetchall():
            value = self._decrypt(blob, _aad("secret", name, ""))
            with self._tx():
                self.con.execute("UPDATE secret SET key_id = ?, blob = ? WHERE name = ? AND key_id = ?",
                                 [new, self.keys.encrypt(value, _aad("secret", name, "")), name, kid])
            done += 1
        cols = ", ".join(FIELDS)
        while True:
            rows = self.con.execute(f"SELECT source, source_id, key_id, updated_at, as_of, {cols} FROM identity "
                                    f"WHERE {self._STALE} LIMIT ?", [new, batch]).fetchall()
            if not rows:
                return done
            updates = []
            for r in rows:
                src, sid = r[0], r[1]
                enc = [None if b is None else self.keys.encrypt(self._decrypt(b, _aad(src, sid, f)), _aad(src, sid, f))
                       for f, b in zip(FIELDS, r[5:])]
                updates.append([new, *enc, self._as_of_blob(src, sid, self._as_of(src, sid, r[4])), src, sid, r[2],
                                r[3]])
            with self._tx():
                cur = self.con.executemany(
                    f"UPDATE identity SET key_id = ?, {', '.join(f + ' = ?' for f in FIELDS)}, as_of = ? "
                    "WHERE source = ? AND source_id = ? AND key_id = ? AND updated_at = ?", updates)
                done += cur.rowcount
            if between:
                between(done)
