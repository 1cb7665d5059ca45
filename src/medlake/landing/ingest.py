"""Ingest: land files, stage what is new, quarantine what is bad, account for everything.

1. **Land.** Each file under the given paths goes to landing under its source (a configured `[[source]]` whose
   folder holds it, or an implicit source named after the folder). A file whose content that source has already
   landed under the same name is *unchanged* and skipped, so a rerun changes nothing; the same content under
   another name is landed as a counted duplicate.
2. **Stage.** Every landed receipt of a source that the store's `ingest_log` does not list yet is read by its
   kind's reader (HL7 v2, FHIR, CSV; detected by content when the source does not say) into staging rows
   (`stg_hl7_*`, `stg_fhir_*`, `stg_csv_*`, each row with `source`, `receipt_seq`, `landing_sha256`,
   `record_location` — where in the landed object the record sits, e.g. "line 12 byte 3301" or
   "Bundle.entry[3]"; not `location`, which stg_hl7_visit uses for PV1-3). Rejected records go to
   quarantine. Staging rows and the log entries of a group of receipts are written in one engine transaction,
   so a crash leaves each receipt staged completely or not at all.
3. **Account.** A summary per source: received, landed, duplicates, unchanged, records staged, rows, quarantined
   by reason.

`replay(source)` rebuilds a source's staging from landing alone; `retry()` re-reads quarantined records (after a
parser or mapping fix) and stages those that now pass, marking them resolved.
"""
from __future__ import annotations

import datetime as dt
import gc
import json
import operator
import re
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import orjson
import pyarrow as pa

from medlake.cdm.ddl import without_nul
from medlake.cdm.importer import QUARANTINE_PREFIX
from medlake.engines.base import Engine, EngineError
from medlake.landing.quarantine import Quarantine
from medlake.landing.store import Landing, Receipt, file_sha256
from medlake.sources import csvfile, fhir
from medlake.sources.config import Source
from medlake.sources.records import Loc, Rejected, Staged

EXTRA = [pa.field("source", pa.string()), pa.field("receipt_seq", pa.int64()),
         pa.field("landing_sha256", pa.string()), pa.field("record_location", pa.string())]
LOG_TABLE = "ingest_log"
RESTAGED_TABLE = "ingest_restaged"  # receipts whose staging `retry` or `replay` rewrote: the next transform maps
#                                     them again (they are below its watermark)
FLUSH_ROWS = 20_000  # buffered rows per table before they go to the engine (inside the open transaction)
COMMIT_ROWS = 200_000  # rows per transaction (a transaction always ends on a receipt boundary)
COMMIT_RECEIPTS = 500
SQL_OF = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float64(): "DOUBLE",
          pa.date32(): "DATE", pa.timestamp("us"): "TIMESTAMP", pa.bool_(): "BOOLEAN", pa.binary(): "BLOB"}
Progress = Callable[[str, int, int | None], None]


# -- staging tables ----------------------------------------------------------------------------------------------
def staging_schemas() -> dict[str, pa.Schema]:
    """Every staging table medlake knows, with its own columns (identifying ones marked)."""
    out = {**fhir.STAGING_SCHEMAS, **csvfile.STAGING_SCHEMAS}
    hl7 = _hl7()
    if hl7 is not None:
        out.update(hl7.STAGING_SCHEMAS)
    return out


def _hl7():
    try:
        from medlake.sources import hl7v2
    except ImportError:
        return None
    return hl7v2


def _full(schema: pa.Schema) -> pa.Schema:
    return pa.schema(list(schema) + EXTRA)


def _ensure_table(engine: Engine, name: str, schema: pa.Schema, known: set[str]) -> None:
    if name in known:
        return
    full = _full(schema)
    if name in engine.tables():
        have = {c.name for c in engine.columns(name)}
        for f in full:
            if f.name not in have:  # a parser gained a column: add it (older rows get NULL)
                engine.execute(f'ALTER TABLE "{name}" ADD COLUMN "{f.name}" {SQL_OF.get(f.type, "VARCHAR")}')
    else:
        cols = ", ".join(f'"{f.name}" {SQL_OF.get(f.type, "VARCHAR")}' for f in full)
        engine.execute(f'CREATE TABLE IF NOT EXISTS "{name}" ({cols})')
    known.add(name)


def _once(batch: pa.RecordBatch):
    box = [batch]
    del batch
    yield box.pop()


def _ensure_log(engine: Engine) -> None:
    if LOG_TABLE not in engine.tables():
        engine.execute(f'CREATE TABLE IF NOT EXISTS "{LOG_TABLE}" (source VARCHAR, receipt_seq BIGINT, '
                       'landing_sha256 VARCHAR, kind VARCHAR, records BIGINT, staged_rows BIGINT, '
                       'quarantined BIGINT, processed_at TIMESTAMP)')


def _mark_restaged(engine: Engine, source: str, seq: int) -> None:
    """In the open transaction: receipt `seq` of `source` was staged again (`medlake transform` maps it again)."""
    if RESTAGED_TABLE not in engine.tables():
        engine.execute(f'CREATE TABLE IF NOT EXISTS "{RESTAGED_TABLE}" (source VARCHAR, receipt_seq BIGINT)')
    engine.execute(f'INSERT INTO "{RESTAGED_TABLE}" VALUES (?, ?)', [source, seq])


def _processed(engine: Engine, source: str) -> set[int]:
    _ensure_log(engine)
    t = engine.query(f'SELECT receipt_seq FROM "{LOG_TABLE}" WHERE source = ?', [source])
    return set(t.column(0).to_pylist())


# -- kinds and readers -------------------------------------------------------------------------------------------
def detect(head: bytes, name: str) -> str | None:
    """The kind of a file from its first bytes: hl7v2 (MSH/FHS/BHS), fhir (JSON), csv (a header line)."""
    h = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    h = h.lstrip(b"\x0b \t\r\n")
    if re.match(rb"(MSH|FHS|BHS)[^A-Za-z0-9\r\n]", h):
        return "hl7v2"
    if h.startswith((b"{", b"[")):
        return "fhir"
    low = name.lower()
    if low.endswith((".csv", ".tsv", ".txt")) and (b"," in h.split(b"\n", 1)[0] or b"\t" in h.split(b"\n", 1)[0]):
        return "csv"
    if low.endswith((".hl7", ".txt", ".dat")) and b"|" in h[:200]:
        return "hl7v2"
    return None


def _hl7_reason(e, parsed: bool) -> str:
    """malformed: the message cannot be parsed; missing_mandatory / invalid: it parses but fails validation."""
    if not parsed:
        return "malformed"
    text = str(getattr(e, "reason", e)).lower()
    return "missing_mandatory" if any(w in text for w in ("missing", "required", "empty")) else "invalid"


def hl7_records(data: bytes, name: str) -> Iterator[Staged | Rejected]:
    hl7 = _hl7()
    if hl7 is None:
        yield Rejected(Loc(name), "no_parser", "the HL7 v2 parser (medlake.sources.hl7v2) is not installed; "
                       "retry once it is", data[:1 << 20])
        return
    for raw in hl7.split(data):
        loc = Loc(name, line=raw.line, offset=raw.offset)
        parsed = False
        try:
            msg = hl7.parse(raw.data)
            parsed = True
            loc.message_id = msg.control_id or None
            if getattr(raw, "error", None):  # the framing says the file was cut inside this message
                yield Rejected(loc, "truncated", raw.error, raw.data)
                continue
            rows = hl7.stage(msg)
        except hl7.HL7Error as e:
            loc.message_id = getattr(e, "control_id", None) or loc.message_id
            loc.field = getattr(e, "field", None)
            yield Rejected(loc, _hl7_reason(e, parsed), str(getattr(e, "reason", e)), raw.data)
            continue
        except Exception as e:  # a parser bug must not stop the batch
            yield Rejected(loc, "parser_error", f"{type(e).__name__}: {e}", raw.data)
            continue
        yield Staged(loc, rows)


def records(kind: str | None, source: Source, stream, name: str) -> Iterator[Staged | Rejected]:
    """The records of one landed object, never raising for bad content."""
    n = 0
    try:
        if kind == "fhir":
            it = fhir.read(stream, name, source)
        elif kind == "csv":
            it = csvfile.read(stream, name, source) if source.columns else iter([Rejected(
                Loc(name), "no_mapping", "a CSV file needs a [[source]] with kind = \"csv\" and [source.columns] "
                "naming its columns; add one and run `medlake quarantine retry`", stream.read(1 << 20))])
        elif kind == "hl7v2":
            it = hl7_records(stream.read(), name)
        else:
            it = iter([Rejected(Loc(name), "unknown_kind", "not HL7 v2, FHIR JSON or CSV by its content; declare "
                                "the source's kind in sources.toml", stream.read(1 << 20))])
        for r in it:
            n += 1
            yield r
    except Exception as e:  # a reader bug: the rest of the file is quarantined, never lost
        yield Rejected(Loc(name, field=f"after record {n}"), "parser_error",
                       f"reader stopped: {type(e).__name__}: {e}", b"")


# -- summary -----------------------------------------------------------------------------------------------------
@dataclass
class SourceSummary:
    received: int = 0
    landed: int = 0
    duplicates: int = 0
    unchanged: int = 0
    receipts_staged: int = 0
    records: int = 0
    rows: int = 0
    quarantined: Counter = field(default_factory=Counter)
    superseded: int = 0   # items of messages cut off, resolved: the message came again whole (`_superseded`)


@dataclass
class Summary:
    batch: str
    sources: dict[str, SourceSummary] = field(default_factory=lambda: defaultdict(SourceSummary))
    ignored: list[str] = field(default_factory=list)

    def total(self) -> SourceSummary:
        t = SourceSummary()
        for s in self.sources.values():
            for k in ("received", "landed", "duplicates", "unchanged", "receipts_staged", "records", "rows",
                      "superseded"):
                setattr(t, k, getattr(t, k) + getattr(s, k))
            t.quarantined.update(s.quarantined)
        return t


# -- the stager --------------------------------------------------------------------------------------------------
class _Stager:
    """Buffers staged rows, writes them and the log inside engine transactions, files rejects in quarantine."""

    def __init__(self, engine: Engine, quarantine: Quarantine, summary: Summary | None = None):
        self.engine, self.q = engine, quarantine
        self.schemas = staging_schemas()
        self.known: set[str] = set()
        self.summary = summary
        self.buf: dict[str, list] = {}
        self.tx = None
        self.tx_rows = self.tx_receipts = 0
        self.log: list[dict] = []
        self.names: dict[int, str | None] = {}
        self.shapes: dict[str, tuple] = {}

    # buffer: table -> [rows as tuples in schema order, seqs, shas, locs]
    def add(self, receipt: Receipt, rec: Staged) -> int:
        key = rec.loc.key()
        self.names[receipt.seq] = receipt.original_name
        n = 0
        for table, rows in rec.rows.items():
            b = self.buf.get(table)
            if b is None:
                b = self.buf[table] = [[], [], [], []]
            shape = self.shapes.get(table)
            if shape is None:
                schema = self.schemas.get(table)
                if schema is None:
                    raise EngineError(f"a reader produced rows for unknown staging table {table}")
                shape = self.shapes[table] = (dict.fromkeys(schema.names), operator.itemgetter(*schema.names))
            blank, pick = shape
            b[0].extend([pick({**blank, **r}) for r in rows])
            k = len(rows)
            b[1].extend([receipt.seq] * k)
            b[2].extend([receipt.sha256] * k)
            b[3].extend([key] * k)
            n += k
            if len(b[0]) >= FLUSH_ROWS:
                self._begin()
                self.flush_table(table, receipt.source)
        return n

    def _begin(self) -> None:
        if self.tx is None:
            self.tx = self.engine.transaction()
            self.tx.__enter__()

    def flush_table(self, table: str, source: str) -> None:
        rows, seqs, shas, locs = self.buf.pop(table)
        if not rows:
            return
        schema = self.schemas[table]
        _ensure_table(self.engine, table, schema, self.known)
        columns = list(zip(*rows))
        bad: dict[int, str] = {}
        arrays = []
        for j, f in enumerate(schema):
            try:
                arrays.append(pa.array(columns[j], type=f.type))
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                for i, v in enumerate(columns[j]):  # find the rows whose value is of the wrong type
                    try:
                        pa.array([v], type=f.type)
                    except (pa.ArrowException, TypeError, ValueError, OverflowError) as e:
                        bad.setdefault(i, f"{table}.{f.name} = {v!r:.80} is not {f.type}: {e}")
        if bad:  # those rows go to quarantine instead of staging
            for i, why in bad.items():
                loc = Loc(self.names.get(seqs[i]), field=table)
                # json, not orjson: the row may hold the very value orjson cannot write (an integer over 64 bits)
                self.q.add_many(source, seqs[i], shas[i], [Rejected(loc, "invalid", why, json.dumps(
                    dict(zip(schema.names, rows[i])), default=str, ensure_ascii=False).encode())], keys=[locs[i]])
                if self.summary is not None:
                    self.summary.sources[source].quarantined["invalid"] += 1
            keep = [i for i in range(len(rows)) if i not in bad]
            rows, seqs, shas, locs = ([x[i] for i in keep] for x in (rows, seqs, shas, locs))
            columns = list(zip(*rows)) if rows else [()] * len(schema)
            arrays = [pa.array(c, type=f.type) for c, f in zip(columns, schema)]
        arrays = [without_nul(a) for a in arrays]
        arrays += [pa.array([source] * len(seqs), pa.string()), pa.array(seqs, pa.int64()),
                   pa.array(shas, pa.string()), pa.array(locs, pa.string())]
        batch = pa.RecordBatch.from_arrays(arrays, schema=_full(schema))
        n = batch.num_rows
        del arrays, columns, rows
        # A reader over a one-shot generator: an engine may keep a registered Arrow object alive until the
        # transaction ends (DuckDB does), a consumed generator holds nothing.
        self.engine.load_arrow(table, pa.RecordBatchReader.from_batches(batch.schema, _once(batch)))
        self.tx_rows += n

    def end_receipt(self, receipt: Receipt, kind: str | None, nrec: int, nrows: int, nbad: int, force=False) -> None:
        self.log.append({"source": receipt.source, "receipt_seq": receipt.seq, "landing_sha256": receipt.sha256,
                         "kind": kind, "records": nrec, "staged_rows": nrows, "quarantined": nbad,
                         "processed_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)})
        self.tx_receipts += 1
        if force or self.tx_rows + sum(len(b[0]) for b in self.buf.values()) >= COMMIT_ROWS \
                or self.tx_receipts >= COMMIT_RECEIPTS:
            self.commit(receipt.source)

    def commit(self, source: str) -> None:
        self._begin()
        try:
            for table in list(self.buf):
                self.flush_table(table, source)
            if self.log:
                _ensure_log(self.engine)
                self.engine.load_arrow(LOG_TABLE, pa.Table.from_pylist(self.log))
        except BaseException as e:
            self.abort(e)
            raise
        tx, self.tx = self.tx, None
        tx.__exit__(None, None, None)
        self.log, self.tx_rows, self.tx_receipts = [], 0, 0

    def abort(self, exc: BaseException | None = None) -> None:
        self.buf.clear()
        self.log = []
        if self.tx is not None:
            tx, self.tx = self.tx, None
            try:
                tx.__exit__(type(exc) if exc else RuntimeError, exc or RuntimeError("aborted"), None)
            except BaseException:
                pass


# -- sources seen by this site ---------------------------------------------------------------------------------
def remember(landing_root: Path, sources: Iterable[Source]) -> None:
    """Keep the latest config of each source beside landing, so replay and retry work without the TOML."""
    path = Path(landing_root) / "sources.json"
    known = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    for s in sources:
        known[s.name] = s.as_dict()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(known, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def known_sources(landing_root: Path) -> dict[str, Source]:
    path = Path(landing_root) / "sources.json"
    if not path.exists():
        return {}
    return {k: Source.from_dict(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


# -- walking and landing -----------------------------------------------------------------------------------------
@dataclass
class Planned:
    source: Source
    path: Path
    name: str  # original name: the path relative to the source folder


def _files(p: Path) -> list[Path]:
    if p.is_file():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in
                                                                       f.relative_to(p).parts))


def plan(paths: Iterable[str | Path], sources: list[Source] | None = None, source_name: str | None = None
         ) -> tuple[list[Planned], list[str]]:
    """Which file goes to which source. With configured sources, files outside all of them are listed as ignored."""
    sources = sources or []
    paths = [Path(p) for p in paths] or [s.path for s in sources if s.path is not None]
    folders = sorted(((s.path.resolve(), s) for s in sources if s.path is not None), key=lambda x: -len(str(x[0])))
    config_files = {Path(s.file).resolve() for s in sources if s.file}
    out, ignored, implicit = [], [], {}
    named = next((s for s in sources if s.name == source_name), None)
    if sources and source_name and named is None:
        raise ValueError(f"--source {source_name}: no such source in the sources file "
                         f"({', '.join(s.name for s in sources)})")
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        for f in _files(p):
            rf = f.resolve()
            src = next((s for folder, s in folders if rf.is_relative_to(folder)), None)
            if src is not None:
                out.append(Planned(src, f, rf.relative_to(src.path.resolve()).as_posix()))
                continue
            if named is not None:  # an upload: files handed in for a configured source, outside its folder
                root = p if p.is_dir() else p.parent
                out.append(Planned(named, f, f.resolve().relative_to(root.resolve()).as_posix()))
                continue
            if sources:
                if rf not in config_files:
                    ignored.append(str(f))
                continue
            root = p if p.is_dir() else p.parent
            name = source_name or re.sub(r"[^A-Za-z0-9_.-]+", "-", root.resolve().name) or "files"
            src = implicit.setdefault(name, Source(name=name, kind="auto", path=root.resolve()))
            out.append(Planned(src, f, f.resolve().relative_to(root.resolve()).as_posix()))
    return out, ignored


def _seen(land: Landing, source: str, sha: str, name: str) -> bool:
    return land.db.execute("SELECT 1 FROM receipt WHERE source = ? AND sha256 = ? AND original_name = ? LIMIT 1",
                           (source, sha, name)).fetchone() is not None


def land_files(land: Landing, planned: list[Planned], batch: str, summary: Summary,
               progress: Progress | None = None) -> None:
    """Land planned files; small ones in groups (one durable commit per group), big ones streamed."""
    from medlake.landing.store import INLINE_LIMIT, Item

    total = sum(p.path.stat().st_size for p in planned)
    done = 0
    group: list[Item] = []
    group_bytes = 0

    def count(receipts):
        for r in receipts:
            s = summary.sources[r.source]
            s.received += 1
            s.duplicates += r.duplicate
            s.landed += not r.duplicate

    for p in planned:
        size = p.path.stat().st_size
        if _seen(land, p.source.name, file_sha256(p.path), p.name):
            summary.sources[p.source.name].unchanged += 1
        elif size > INLINE_LIMIT:
            count([land.put_file(p.path, p.source.name, batch, original_name=p.name)])
        else:
            group.append(Item(p.path.read_bytes(), p.source.name, p.name, batch))
            group_bytes += size
            if group_bytes >= 64 << 20 or len(group) >= 1000:
                count(land.put_many(group))
                group, group_bytes = [], 0
        done += size
        if progress:
            progress(f"landing {p.name}", done, total)
    if group:
        count(land.put_many(group))


# -- staging -------------------------------------------------------------------------------------------------------
def _stage_receipt(st: _Stager, land: Landing, q: Quarantine, src: Source, r: Receipt, summary: Summary) -> None:
    name = r.original_name or r.sha256[:16]
    kind = src.kind if src.kind in ("hl7v2", "fhir", "csv") else None
    nrec = nrows = nbad = 0
    bad: list[Rejected] = []
    s = summary.sources[src.name]
    with land.open(r.sha256) as f:
        if kind is None:
            kind = detect(f.read(4096), name)
            f.seek(0)
        for rec in records(kind, src, f, name):
            if isinstance(rec, Staged) and any(t not in st.schemas for t in rec.rows):
                rec = Rejected(rec.loc, "parser_error", "the reader produced rows for unknown staging table(s) "
                               f"{', '.join(t for t in rec.rows if t not in st.schemas)}", b"")
            if isinstance(rec, Staged):
                nrows += st.add(r, rec)
                nrec += 1
            else:
                bad.append(rec)
                s.quarantined[rec.reason] += 1
                if len(bad) >= 1000:
                    nbad += len(bad)
                    q.add_many(src.name, r.seq, r.sha256, bad)
                    bad = []
    nbad += len(bad)
    q.add_many(src.name, r.seq, r.sha256, bad)
    s.receipts_staged += 1
    s.records += nrec
    s.rows += nrows
    st.end_receipt(r, kind, nrec, nrows, nbad)


def stage_pending(engine: Engine, land: Landing, q: Quarantine, src: Source, summary: Summary,
                  progress: Progress | None = None) -> None:
    """Stage every landed receipt of a source that is not in the ingest log yet."""
    done = _processed(engine, src.name)
    pending = [r for r in land.receipts(src.name) if r.seq not in done]
    st = _Stager(engine, q, summary)
    collecting = gc.isenabled()
    gc.disable()  # parsed JSON has no reference cycles; the collector would rescan every buffered row
    try:
        for i, r in enumerate(pending, 1):
            _stage_receipt(st, land, q, src, r, summary)
            if progress:
                progress(f"staging {src.name}: {r.original_name or r.sha256[:12]}", i, len(pending))
        if st.log or st.buf:
            st.commit(src.name)
    except BaseException as e:
        st.abort(e)
        raise
    finally:
        if collecting:
            gc.enable()
    if pending:
        summary.sources[src.name].superseded += _superseded(engine, q, src.name)


def _superseded(engine: Engine, q: Quarantine, source: str) -> int:
    """A message cut off in transit (an MLLP connection dropped mid-frame, a file copied half) is quarantined
    `truncated`; the sender then sends it again, whole. Once another receipt of the source has staged a message
    with that control id, the part is resolved as superseded (kept, as every item). Returns how many."""
    cut = [x for x in q.items(source=source, reason="truncated") if x.message_id]
    tables = [t for t in engine.tables() if t.startswith("stg_hl7_")
              and {"source", "control_id", "receipt_seq"} <= {c.name for c in engine.columns(t)}] if cut else []
    if not tables:
        return 0
    ids = sorted({x.message_id for x in cut})
    marks = ", ".join("?" for _ in ids)
    whole: dict[str, set[int]] = {}
    for t in tables:
        for r in engine.query(f"SELECT DISTINCT control_id, receipt_seq FROM {t} WHERE source = ? AND control_id IN "
                              f"({marks})", [source, *ids]).to_pylist():
            whole.setdefault(r["control_id"], set()).add(r["receipt_seq"])
    n = 0
    for x in cut:
        again = sorted(whole.get(x.message_id, set()) - {x.receipt_seq})
        if again:
            q.resolve(x.id, f"superseded: message {x.message_id} arrived whole in receipt {again[-1]}")
            n += 1
    return n


def ingest(engine: Engine, land: Landing, q: Quarantine, paths: Iterable[str | Path] = (),
           sources: list[Source] | None = None, source_name: str | None = None, batch: str | None = None,
           progress: Progress | None = None) -> Summary:
    """Land everything under `paths`, then stage what is new for every source involved. Returns the summary."""
    batch = batch or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    summary = Summary(batch)
    planned, summary.ignored = plan(paths, sources, source_name)
    involved = {p.source.name: p.source for p in planned}
    for s in sources or ():
        involved.setdefault(s.name, s)  # configured sources also get their MLLP-landed receipts staged
    remember(land.root, involved.values())
    land_files(land, planned, summary.batch, summary, progress)
    for src in involved.values():
        summary.sources[src.name]  # listed even when nothing happened
        stage_pending(engine, land, q, src, summary, progress)
    return summary


def _staging_tables(engine: Engine) -> list[str]:
    return [t for t in engine.tables() if t.startswith("stg_") and "source" in {c.name for c in engine.columns(t)}]


def replay(engine: Engine, land: Landing, q: Quarantine, src: Source, progress: Progress | None = None) -> Summary:
    """Drop a source's staging rows and rebuild them from landing alone."""
    summary = Summary(f"replay-{src.name}")
    _ensure_log(engine)
    with engine.transaction():
        for t in _staging_tables(engine):
            engine.execute(f'DELETE FROM "{t}" WHERE source = ?', [src.name])
        engine.execute(f'DELETE FROM "{LOG_TABLE}" WHERE source = ?', [src.name])
        _mark_restaged(engine, src.name, 0)   # every receipt of the source
    summary.sources[src.name]
    stage_pending(engine, land, q, src, summary, progress)
    return summary


@dataclass
class RetryResult:
    resolved: int = 0
    still_failing: int = 0
    rows: int = 0
    new_items: int = 0
    errors: list[str] = field(default_factory=list)


def retry(engine: Engine, land: Landing, q: Quarantine, sources: dict[str, Source], source: str | None = None,
          ids: Iterable[int] | None = None) -> RetryResult:
    """Re-read quarantined records from landing with today's parsers and config; stage those that now pass.

    A record named by a location is re-staged at that location (its old rows, if any, replaced); a file-level
    item re-stages the whole file. Resolved items are marked, never deleted; failing ones stay open.
    """
    res = RetryResult()
    items = q.items(source=source, status="open", ids=ids)
    groups: dict[tuple, list] = defaultdict(list)
    for it in items:
        groups[(it.source, it.receipt_seq, it.landing_sha256)].append(it)
    receipts = {}
    for (name, seq, sha), its in groups.items():
        src = sources.get(name)
        if name.startswith(QUARANTINE_PREFIX):  # rows of `medlake cdm import`: no landed file to read again
            res.errors.append(f"{name}: rows of a CDM import; fix the file and run `medlake cdm import` again")
            res.still_failing += len(its)
            continue
        if src is None:
            res.errors.append(f"source {name!r} is not known: pass --sources with its [[source]]")
            res.still_failing += len(its)
            continue
        if seq not in receipts:
            receipts.update({r.seq: r for r in land.receipts(name, after_seq=seq - 1) if r.seq == seq})
        r = receipts.get(seq)
        if r is None:
            res.errors.append(f"receipt {seq} of {name} is not in landing")
            res.still_failing += len(its)
            continue
        want = {it.loc_key: it for it in its}
        whole = "file" in want or any(k.startswith("after record") for k in want)
        staged: list[Staged] = []
        failed: dict[str, Rejected] = {}
        new: list[Rejected] = []
        kind = src.kind if src.kind in ("hl7v2", "fhir", "csv") else None
        with land.open(sha) as f:
            if kind is None:
                kind = detect(f.read(4096), r.original_name or "")
                f.seek(0)
            for rec in records(kind, src, f, r.original_name or sha[:16]):
                k = rec.loc.key()
                if isinstance(rec, Staged):
                    if whole or k in want:
                        staged.append(rec)
                elif k in want:
                    failed[k] = rec
                elif whole:
                    new.append(rec)
        summary = Summary("retry")
        st = _Stager(engine, q, summary)
        st._begin()
        try:
            tables = _staging_tables(engine)
            keys = sorted({s.loc.key() for s in staged})
            for t in tables:
                if whole:
                    engine.execute(f'DELETE FROM "{t}" WHERE source = ? AND receipt_seq = ?', [name, seq])
                else:
                    for i in range(0, len(keys), 500):
                        part = keys[i:i + 500]
                        engine.execute(f'DELETE FROM "{t}" WHERE source = ? AND receipt_seq = ? AND record_location IN '
                                       f'({", ".join("?" * len(part))})', [name, seq, *part])
            for s in staged:
                res.rows += st.add(r, s)
            for table in list(st.buf):
                st.flush_table(table, name)
            if staged:
                _mark_restaged(engine, name, seq)
        except BaseException as e:
            st.abort(e)
            raise
        tx, st.tx = st.tx, None
        tx.__exit__(None, None, None)
        res.new_items += q.add_many(name, seq, sha, new)
        staged_keys = {s.loc.key() for s in staged}
        for k, it in want.items():
            if k in failed:
                f = failed[k]
                q.failed_again(it.id, f.detail if f.reason == it.reason else f"{f.reason}: {f.detail}", f.loc.field)
                res.still_failing += 1
            elif k in staged_keys or (whole and k == "file"):
                what = f"{len(staged)} record(s) of the file" if whole else "record"
                q.resolve(it.id, f"retry staged the {what}" + (f"; {len(new)} still rejected as new items"
                                                                if whole and new else ""))
                res.resolved += 1
            elif whole:
                q.resolve(it.id, "retry re-read the whole file")
                res.resolved += 1
            else:
                q.failed_again(it.id, "no record at this location when the object was read again")
                res.still_failing += 1
    return res
