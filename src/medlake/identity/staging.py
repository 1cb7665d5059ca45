"""Source identities and merges from the staging tables, and moving identifying staging columns into the vault.

One source identity per (source, source_id): for HL7 v2 the patient id (PID-3, the MRN) of the source, for FHIR
the Patient resource id. Several staging rows of one identity (A01, A08, every ORU's PID …) are folded into one:
per field, the latest non-empty value (by `as_of`: event time, then receipt, then place in the file), each field
with its `as_of`, which the vault keeps, so a later run's older message changes nothing newer. A field can be
taken away: by HL7's explicit null `""` (`stg_hl7_patient.removed`), or by a FHIR Patient version that lacks it (a
version is the whole resource); it then goes from the vault too. A40 merges come from
`stg_hl7_merge`.

`vault_staging(engine, vault)` puts these identities into the vault, records the merges in the EMPI, then nulls
(`clear_columns`: insert again with NULLs, delete the originals — engine-neutral, Spark has no UPDATE) every
identifying staging column (Arrow metadata `identifying=true` in the sources' `STAGING_SCHEMAS`) except
the source ids themselves (`KEEP`), which the transform needs to find `person_id`. On a DuckDB file the store
must then be rewritten (`compact_duckdb`), or the old values stay readable in freed blocks.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa

from medlake.engines.base import arrow_schema_of
from medlake.identity import demographics, empi
from medlake.landing.ingest import SQL_OF
from medlake.identity.normalize import FIELDS, id_check_ok
from medlake.identity.vault import Vault, VaultError

KEEP = {"patient_id", "prior_patient_id"}  # source ids: the join key to empi_person_map, not moved
_ID18 = re.compile(r"^[0-9]{17}[0-9Xx]$")


def _schemas() -> dict:
    """STAGING_SCHEMAS of every source module that is there (each team's module may land at its own time)."""
    out = {}
    for mod in ("hl7v2", "fhir", "csvfile"):
        try:
            m = __import__(f"medlake.sources.{mod}", fromlist=["STAGING_SCHEMAS"])
        except ImportError:
            continue
        out.update(getattr(m, "STAGING_SCHEMAS", {}))
    return out


def identifying_columns(table: str, schemas: dict | None = None) -> list[str]:
    from medlake.sources.records import is_identifying

    schema = (schemas if schemas is not None else _schemas()).get(table)
    if schema is None and table.startswith("stg_csv_"):
        schema = next((s for n, s in (schemas or _schemas()).items() if n == table), None)
    return [f.name for f in schema if is_identifying(f)] if schema is not None else []


def _rows(engine, table: str, wanted: list[str], order: list[str]) -> list[dict]:
    have = {c.name for c in engine.columns(table)}
    cols = [c for c in wanted if c in have]
    if "source" not in have:
        return []
    by = ", ".join(f'"{c}" NULLS FIRST' for c in order if c in have) or "1"  # no time: oldest, on every engine
    return engine.query(f'SELECT {", ".join(chr(34) + c + chr(34) for c in cols)} FROM "{table}" ORDER BY {by}').to_pylist()


_NO_TIME = "0000-00-00T00:00:00.000000"  # a row without a time is older than every row with one (as the transform)
_PLACE = ("receipt_seq", "record_location")


def as_of(time, receipt_seq, location) -> str:
    """Where a staging row stands in time, as text that sorts so: its event time (none: oldest), then its receipt,
    then its place in the file (as text, as the transform breaks such ties). The vault keeps it per field, so a
    later run's older message does not replace a newer value (`Vault.put`)."""
    t = _NO_TIME if time is None else f"{time.year:04d}-{time:%m-%dT%H:%M:%S}.{time.microsecond:06d}"
    return f"{t}|{int(receipt_seq or 0):020d}|{location or ''}"


WATERMARK = "identity_watermark"  # per staging table and source: the last receipt an identity run has read


def _unread(engine, table: str, have: set[str]) -> str:
    """The rows of `table` an identity run reads: those received after the last run's watermark, and any that
    still hold an identifying value (a replayed receipt staged again); the others are in the vault already, each
    field with its time (`Vault.put` compares them), so a run costs what is new, not the whole history."""
    held = " OR ".join(f't."{c}" IS NOT NULL' for c in identifying_columns(table) if c in have and c not in KEEP)
    if "receipt_seq" not in have or WATERMARK not in engine.tables():
        return ""
    return (f" LEFT JOIN {WATERMARK} w ON w.stg_table = '{table}' AND w.source = t.source WHERE w.receipt_seq IS "
            f"NULL OR t.receipt_seq > w.receipt_seq" + (f" OR {held}" if held else ""))


def _latest_rows(engine, table: str, wanted: list[str], when: str) -> list[dict]:
    """The `wanted` columns of `table`'s rows not read by an earlier run (`_unread`), rows alike but for their time
    and place (every ORU repeats its PID) once, at their latest: only the latest of them can give a field its
    latest value."""
    have = {c.name for c in engine.columns(table)}
    if "source" not in have:
        return []
    cols = [c for c in wanted if c in have]
    names = ", ".join(f'"{c}"' for c in cols)
    alike = ", ".join(f'"{c}"' for c in cols if c not in (when, *_PLACE))
    order = ", ".join(f'"{c}" DESC NULLS LAST' for c in (when, *_PLACE) if c in have)
    rows = f'(SELECT t.* FROM "{table}" t{_unread(engine, table, have)})'
    return engine.query(f'SELECT {names} FROM (SELECT {names}, ROW_NUMBER() OVER (PARTITION BY {alike} ORDER BY '
                        f'{order}) AS rn FROM {rows} AS r) AS t WHERE rn = 1').to_pylist()


def _marks(engine, tables: list[str]) -> list[tuple[str, str, int]]:
    """(staging table, source, last receipt) of the patient tables an identity run reads, taken before it reads."""
    out = []
    for t in tables:
        if {"source", "receipt_seq"} <= {c.name for c in engine.columns(t)}:
            out += [(t, r["source"], r["n"]) for r in engine.query(
                f'SELECT source, MAX(receipt_seq) AS n FROM "{t}" GROUP BY source').to_pylist()]
    return out


def _set_marks(engine, marks: list[tuple[str, str, int]]) -> None:
    """After the identities are in the vault: the next run reads only what comes after `marks` (`_unread`)."""
    if not marks:
        return
    if WATERMARK not in engine.tables():
        engine.execute(f"CREATE TABLE {WATERMARK} (stg_table VARCHAR, source VARCHAR, receipt_seq BIGINT)")
    cols = list(zip(*marks))
    with engine.transaction():
        tables = ", ".join(sorted({f"'{t}'" for t in cols[0]}))
        engine.execute(f"DELETE FROM {WATERMARK} WHERE stg_table IN ({tables})")
        engine.load_arrow(WATERMARK, pa.table({"stg_table": pa.array(cols[0], pa.string()),
                                               "source": pa.array(cols[1], pa.string()),
                                               "receipt_seq": pa.array(cols[2], pa.int64())}))


def _received(upto: list[tuple[str, int]]) -> str:
    """A condition on a staging row (`source`, `receipt_seq`): received up to the receipt `upto` names for its
    source (none named: false)."""
    return " OR ".join(f"(source = '{s.replace(chr(39), chr(39) * 2)}' AND receipt_seq <= {int(n)})"
                       for s, n in upto) or "1 = 0"


def _patient_tables(engine) -> list[str]:
    return [t for t in ("stg_hl7_patient", "stg_fhir_patient") if t in engine.tables()]


def missing_in_vault(engine, vault: Vault) -> list[dict]:
    """Per patient table and source, the receipts whose identifying values the store moved into a vault
    (`identity_vaulted`) beyond what this vault holds (`Vault.read_up_to`), and whose staging rows no longer hold
    them (a replay stages them again): the vault is older than the store. None for a vault of before 2026-12-06 (it
    has identities but no record of the receipts they came from)."""
    upto = vault.read_up_to()
    if (not upto and vault.count()) or VAULTED not in engine.tables():
        return []
    schemas, out = _schemas(), []
    for t in _patient_tables(engine):
        have = {c.name for c in engine.columns(t)}
        held = " OR ".join(f'"{c}" IS NOT NULL' for c in identifying_columns(t, schemas) if c in have and c not in KEEP)
        if not held or not {"source", "receipt_seq"} <= have:
            continue
        after = f"NOT ({_received([(s, n) for (tt, s), n in upto.items() if tt == t])})"
        out += engine.query(
            f"SELECT '{t}' AS stg_table, v.source, min(v.receipt_seq) AS lo, max(v.receipt_seq) AS hi, count(*) AS n "
            f"FROM (SELECT DISTINCT source, receipt_seq FROM {VAULTED} WHERE stg_table = '{t}' AND present > 0 AND "
            f"{after}) v JOIN (SELECT source, receipt_seq, max(CASE WHEN {held} THEN 1 ELSE 0 END) AS held FROM "
            f'"{t}" WHERE {after} GROUP BY source, receipt_seq) s ON s.source = v.source AND s.receipt_seq = '
            f"v.receipt_seq WHERE s.held = 0 GROUP BY v.source ORDER BY v.source").to_pylist()
    return out


def lacking(vault: Vault, missing: list[dict]) -> str:
    """What `missing_in_vault` found, and what to do, in one line."""
    return (f"the identity vault {vault.path} lacks the identifying values of {sum(m['n'] for m in missing):,} "
            "receipt(s) the store has moved into a vault ("
            + "; ".join(f"{m['source']}: receipts {m['lo']}–{m['hi']} of {m['stg_table']}" for m in missing)
            + "): it is older than the store (a backup restored, or a new vault file). The landing keeps the "
            "originals: " + ", ".join(f"`medlake replay --source {s}`" for s in sorted({m["source"] for m in missing}))
            + ", then `medlake empi run` again")


def _fold(rows: list[dict], identity, when: str) -> list[dict]:
    """One record per (source, source_id): per field the value of the latest row (by `as_of`) that has one, and
    that row's `as_of` per field. `identity(row)` gives a row's record (None: the row names no identity); its
    `_removed` lists the fields the row takes away (HL7's `""`; what a FHIR Patient version lacks): they are left
    empty with the row's `as_of` (`Vault.put` removes them) unless a later row has them."""
    out: dict = {}
    for at_row, r in sorted(((as_of(r.get(when), r.get("receipt_seq"), r.get("record_location")), r) for r in rows),
                            key=lambda x: x[0]):
        rec = identity(r)
        if rec is None:
            continue
        removed = rec.pop("_removed", ())
        values, at = out.setdefault((rec["source"], rec["source_id"]), ({}, {}))
        for f, v in rec.items():
            if v not in (None, ""):
                values[f] = v
                if f not in ("source", "source_id"):
                    at[f] = at_row
            elif f in removed:
                values.pop(f, None)
                at[f] = at_row
    return [{**values, "as_of": at} for values, at in out.values()]


# vault fields an HL7 explicit null `""` in a PID field takes away (`stg_hl7_patient.removed`)
_HL7_REMOVES = {"PID-5": ("family", "given", "full_name"), "PID-7": ("birth_date",), "PID-8": ("sex",),
                "PID-11": ("address",), "PID-13": ("phone",)}


def _hl7_ids(text: str | None) -> dict:
    """National id and insurance number from PID-3 repetitions (`id^^^authority^type~…`)."""
    out = {}
    for rep in (text or "").split("~"):
        p = rep.split("^") + [""] * 5
        if p[4] in ("NNCHN", "NN", "SS") or (_ID18.match(p[0]) and id_check_ok(p[0].upper())):
            out.setdefault("id_number", p[0])
        elif p[4] in ("HC", "IN", "SN"):
            out.setdefault("insurance", p[0])
    return out


def _join(*parts) -> str | None:
    s = " ".join(str(p) for p in parts if p not in (None, ""))
    return s or None


def source_identities(engine, sources: dict[str, tuple[str, str]] | None = None) -> list[dict]:
    """Vault records from `stg_hl7_patient` and `stg_fhir_patient`, with `as_of` per field. `sources` maps a source
    name to (hospital, system) (from sources.toml); without it the HL7 assigning authority stands for the hospital."""
    sources = sources or {}
    tables = set(engine.tables())
    out = []
    if "stg_hl7_patient" in tables:
        cols = ["source", "patient_id", "patient_id_type", "patient_id_authority", "identifiers", "national_id",
                "names", "family_name", "given_name", "middle_name", "birth_date", "sex", "address_street",
                "address_other", "address_county", "address_city", "address_state", "address_postal_code",
                "phone_home", "phone_business", "removed", "event_time", *_PLACE]

        def hl7(r):
            if not r.get("patient_id"):
                return None
            src, pid = r["source"], r["patient_id"]
            hosp, system = sources.get(src, (r.get("patient_id_authority"), None))
            ids = _hl7_ids(r.get("identifiers"))
            return dict(
                source=src, source_id=str(pid), hospital=hosp, system=system,
                id_type="mrn" if (r.get("patient_id_type") or "MR") == "MR" else r["patient_id_type"].lower(),
                family=r.get("family_name"), given=_join(r.get("given_name"), r.get("middle_name")),
                full_name=None if r.get("family_name") else r.get("names"),
                id_number=r.get("national_id") or ids.get("id_number"), insurance=ids.get("insurance"),
                birth_date=r.get("birth_date"), sex=r.get("sex"),
                phone=r.get("phone_home") or r.get("phone_business"),
                address=_join(r.get("address_state"), r.get("address_city"), r.get("address_county"),
                              r.get("address_street"), r.get("address_other")),
                mrn=str(pid), _removed={f for p in (r.get("removed") or "").split() for f in _HL7_REMOVES.get(p, ())})
        out += _fold(_latest_rows(engine, "stg_hl7_patient", cols, "event_time"), hl7, "event_time")
    if "stg_fhir_patient" in tables:
        cols = ["source", "resource_id", "gender", "birth_date", "family_name", "given_names", "name_text",
                "identifiers", "mrn", "telecom", "address_line", "address_city", "address_district", "address_state",
                "address_postal_code", "last_updated", *_PLACE]
        moved = [c for c in identifying_columns("stg_fhir_patient") if c in cols]

        def fhir(r):
            if not r.get("resource_id"):
                return None
            src = r["source"]
            hosp, system = sources.get(src, (None, None))
            idn = ins = None
            for i in _loads(r.get("identifiers")):
                v = str(i.get("value") or "")
                if _ID18.match(v) and (id_check_ok(v.upper()) or "resident" in str(i.get("system", "")).lower()):
                    idn = idn or v
                elif "ins" in str(i.get("system", "")).lower():
                    ins = ins or v
            phone = next((t.get("value") for t in _loads(r.get("telecom")) if t.get("system") == "phone"), None)
            # a version is the whole resource: what it lacks was removed (unless its identifying values have
            # moved to the vault already: all NULL in staging, it says nothing of them)
            return dict(
                source=src, source_id=str(r["resource_id"]), hospital=hosp, system=system, id_type="patient_resource",
                family=r.get("family_name"), given=r.get("given_names"),
                full_name=None if r.get("family_name") else r.get("name_text"), id_number=idn, insurance=ins,
                birth_date=r.get("birth_date"), sex=r.get("gender"), phone=phone,
                address=_join(r.get("address_state"), r.get("address_city"), r.get("address_district"),
                              r.get("address_line")), mrn=r.get("mrn"),
                _removed=FIELDS if any(r.get(c) not in (None, "") for c in moved) else ())
        out += _fold(_latest_rows(engine, "stg_fhir_patient", cols, "last_updated"), fhir, "last_updated")
    return out


def _loads(text) -> list[dict]:
    try:
        v = json.loads(text) if text else []
    except ValueError:
        return []
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def source_merges(engine) -> list[dict]:
    """A40 (and A34/A36/A39/A41) merges: prior patient id -> surviving patient id, within one source."""
    if "stg_hl7_merge" not in engine.tables():
        return []
    rows = _rows(engine, "stg_hl7_merge", ["source", "patient_id", "prior_patient_id", "event_type", "control_id"],
                 ["event_time", *_PLACE])
    return [dict(prior_source=r["source"], prior_id=r["prior_patient_id"], source=r["source"], source_id=r["patient_id"],
                 reason=f"ADT {r.get('event_type') or 'merge'} message {r.get('control_id')}")
            for r in rows if r.get("prior_patient_id") and r.get("patient_id")]


def vault_staging(engine, vault: Vault, sources: dict[str, tuple[str, str]] | None = None) -> dict:
    """Move identifying staging values into the vault; record merges; null the moved columns in staging.
    Returns counts. Idempotent: a second call finds nothing left to move. Reads only the patient rows an earlier
    call has not (`_unread`): `identities` counts those this call put. One snapshot from the read to the clear: a
    row another process stages meanwhile (`medlake listen`, a `quarantine retry` at its old receipt) is not seen,
    so not cleared, and keeps its values for the next run."""
    with engine.transaction(snapshot=True):
        marks = _marks(engine, _patient_tables(engine))
        missing = missing_in_vault(engine, vault)
        if missing:
            raise VaultError(lacking(vault, missing))
        ids = source_identities(engine, sources)
        # identities already in the vault and nothing new in staging: put() is only called with what staging holds
        stored = vault.put(ids) if ids else []  # as merged with what the vault held: a later run's older message loses
        demographics.record(engine, stored)  # sex, year and month of birth: what the CDM may keep
        merges = empi.record_merges(engine, source_merges(engine))
        vault.set_read(marks)
        _set_marks(engine, marks)
        schemas = _schemas()
        nulled = {}
        for t in engine.tables():
            if not t.startswith("stg_"):
                continue
            # only rows up to the marks, too: called inside a caller's transaction, the snapshot is the caller's
            upto = [(s, n) for tt, s, n in marks if tt == t] if any(m[0] == t for m in marks) else None
            n = clear_columns(engine, t, [c for c in identifying_columns(t, schemas) if c not in KEEP], upto)
            if n:
                nulled[t] = n
    return {"identities": len(stored), "merges": merges, "rows_cleared": nulled}


VAULTED = "identity_vaulted"  # per staging table, source, receipt and column: how many values moved to the vault


def _record_vaulted(engine, table: str, gone: list[str], where: str) -> None:
    """Count, per source and receipt, the values of the columns `gone` about to move into the vault from the rows
    `where` selects (a receipt moved again after a replay replaces its counts): staging then holds NULL where the
    source did send a value, and the quality run's completeness checks count these as sent (quality.feeds)."""
    if VAULTED not in engine.tables():
        engine.execute(f"CREATE TABLE {VAULTED} (stg_table VARCHAR, source VARCHAR, receipt_seq BIGINT, "
                       "field VARCHAR, present BIGINT)")
    engine.execute(f"DELETE FROM {VAULTED} WHERE stg_table = '{table}' AND source || '|' || CAST(receipt_seq AS "
                   f'VARCHAR) IN (SELECT source || \'|\' || CAST(receipt_seq AS VARCHAR) FROM "{table}" WHERE {where})')
    engine.execute(f"INSERT INTO {VAULTED} " + " UNION ALL ".join(
        f"SELECT '{table}', source, CAST(receipt_seq AS BIGINT), '{c}', count(\"{c}\") FROM \"{table}\" "
        f"WHERE {where} GROUP BY source, receipt_seq HAVING count(\"{c}\") > 0" for c in gone))


def clear_columns(engine, table: str, columns: list[str], upto: list[tuple[str, int]] | None = None) -> int:
    """Set `columns` to NULL in every row of `table` that has a value in one of them (a staging table first records
    how many values move: `_record_vaulted`); returns how many rows. `upto` [(source, receipt)]: only the rows of
    those sources received up to those receipts.

    Engine-neutral (Spark's Parquet tables have no UPDATE): the rows are inserted again with those columns
    NULL, then the originals are deleted — both set-based in the engine, inside the caller's transaction."""
    cols = engine.columns(table)
    gone = [c.name for c in cols if c.name in set(columns)]
    if not gone:
        return 0
    where = " OR ".join(f'"{c}" IS NOT NULL' for c in gone)
    if upto is not None:
        where = f"({where}) AND ({_received(upto)})"
    n = engine.query(f'SELECT count(*) FROM "{table}" WHERE {where}').column(0)[0].as_py()
    if n:
        if {"source", "receipt_seq"} <= {c.name for c in cols}:  # a staging table: what moved, for quality
            _record_vaulted(engine, table, gone, where)
        types = dict(zip((c.name for c in cols), arrow_schema_of(cols).types))
        select = ", ".join(f'CAST(NULL AS {SQL_OF.get(types[c.name], "VARCHAR")})' if c.name in gone
                           else f'"{c.name}"' for c in cols)
        names = ", ".join(f'"{c.name}"' for c in cols)
        engine.execute(f'INSERT INTO "{table}" ({names}) SELECT {select} FROM "{table}" WHERE {where}')
        engine.execute(f'DELETE FROM "{table}" WHERE {where}')
    return n


def compact_duckdb(path: str | Path) -> None:
    """Rewrite a DuckDB file so values nulled or deleted are gone from its freed blocks too. No connection to
    the file may be open."""
    import duckdb

    path = Path(path)
    tmp = path.with_name(path.name + ".compact")
    if tmp.exists():
        tmp.unlink()
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{path}' AS old (READ_ONLY)")
        con.execute(f"ATTACH '{tmp}' AS fresh")
        con.execute("COPY FROM DATABASE old TO fresh")
        con.execute("DETACH old")
        con.execute("DETACH fresh")
    finally:
        con.close()
    os.replace(tmp, path)
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        wal.unlink()
