"""The `medlake` command: a thin caller of the layers below.

Exit codes: 0 success, 1 failure (one clear line on stderr), 2 usage error.
"""
from __future__ import annotations

import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup, TyperOption
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from medlake import config as config_mod

GLOBAL_OPTIONS = ("--store", "--config")


def global_options_first(args: list[str]) -> list[str]:
    """`medlake quality run --store URL` as `medlake --store URL quality run`: the store and config options are the
    root's, but people write them after the command too. Each (with its value) is moved to the front, in order;
    nothing after `--` is touched. One given twice with two values (before and after the command) is refused: which
    store was meant cannot be told."""
    moved, rest, seen, i = [], [], {}, 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest += args[i:]
            break
        name, eq, value = a.partition("=")
        if name in GLOBAL_OPTIONS:
            if not eq:
                if i + 1 == len(args):
                    raise typer.BadParameter("requires a value.", param_hint=f"'{a}'")
                i += 1
                value = args[i]
            if seen.setdefault(name, value) != value:
                raise typer.BadParameter(f"given twice, as {seen[name]!r} and {value!r}; give it once.",
                                         param_hint=f"'{name}'")
            moved += [name, value]
        else:
            rest.append(a)
        i += 1
    return moved + rest


if hasattr(TyperOption, "display_type_rich"):  # typer 0.29 gives a flag a type in help (`--full <bool>`)
    _type_of = TyperOption.display_type_rich  # as if it took a value; a flag takes none
    TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag and not self.count else _type_of(self, ctx)


class _Root(TyperGroup):
    def parse_args(self, ctx, args):
        try:
            args = global_options_first(list(args))
        except typer.BadParameter as e:
            e.ctx = ctx
            raise
        return super().parse_args(ctx, args)


app = typer.Typer(help="medlake: a hospital data center on the OMOP CDM.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, cls=_Root)
vocab_app = typer.Typer(help="Load and inspect OMOP vocabularies.", no_args_is_help=True)
app.add_typer(vocab_app, name="vocab")
quality_app = typer.Typer(help="Data quality: every OHDSI DQD check, set-based, with a report.", no_args_is_help=True)
app.add_typer(quality_app, name="quality")
cdm_app = typer.Typer(help="Bring an existing OMOP CDM into a store.", no_args_is_help=True)
app.add_typer(cdm_app, name="cdm")
identity_app = typer.Typer(help="The identity vault: keys, rotation, status.", no_args_is_help=True)
app.add_typer(identity_app, name="identity")
empi_app = typer.Typer(help="EMPI: one person across systems; review, decisions, explain.", no_args_is_help=True)
app.add_typer(empi_app, name="empi")

# Not a terminal (a pipeline's log, `| grep`): lines as long as they are, not cut at 80 columns (or $COLUMNS), so a
# path or a check id stays on one line and a table's cells whole.
out = Console(width=None if sys.stdout.isatty() else 100_000)
err = Console(stderr=True)


class State:
    store: Optional[str] = None
    config: Optional[str] = None


state = State()


def _percent(text) -> float:
    """A percent option's value: 5, 2.5 or 5% (as the README writes it); 0 to 100."""
    try:
        value = float(str(text).strip().removesuffix("%"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a percent (5, 2.5 or 5%)") from None
    if not 0 <= value <= 100:  # (NaN too)
        raise typer.BadParameter(f"{text!r} is not a percent from 0 to 100")
    return value


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        err.print(f"warning: {w}", highlight=False, markup=False, soft_wrap=True)


def _items(text: Optional[str]) -> list[str] | None:
    """A comma-separated option's items (None when not given)."""
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


@app.callback()
def _root(
    store: Optional[str] = typer.Option(
        None, "--store", help="Store URL: duckdb:PATH, postgresql://…, spark:DIR (also after the command)."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Config file (default: ./medlake.toml; also after the command)."),
) -> None:
    state.store = store
    state.config = str(config) if config else None


def settings() -> config_mod.Config:
    return config_mod.load(state.config, state.store)


def engine(read_only: bool = False):
    from medlake.engines import open_engine

    return open_engine(settings().store, read_only)


@contextmanager
def open_store(read_only: bool = False):
    """The configured store, closed when the block ends (also on error); `read_only`: a command that only reads it
    (a DuckDB file then opens beside a notebook reading it)."""
    eng = engine(read_only)
    try:
        yield eng
    finally:
        eng.close()


def progress() -> Progress:
    """A bar counting bytes (`_counting_progress` counts things: tables, files, messages)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


@app.command()
def init(cdm_version: Optional[str] = typer.Option(None, "--cdm-version", help="OMOP CDM version: 5.4 or 5.3.")):
    """Create an OMOP CDM store (tables generated from the official spec)."""
    from medlake.cdm import store

    cfg = settings()
    version = cdm_version or cfg.cdm_version
    with open_store() as eng:
        created = store.init(eng, version)
    out.print(f"OMOP CDM v{version} at {cfg.store}: {len(created)} table(s) created")


@vocab_app.command("load")
def vocab_load(
    folder: Optional[Path] = typer.Argument(None, help="Unzipped Athena download (tab-separated files)."),
    demo: bool = typer.Option(False, "--demo", help="Load the demo vocabulary shipped with medlake."),
):
    """Load an Athena vocabulary download (or the shipped demo subset) into the store."""
    from medlake.cdm import store, vocab

    if folder is None and not demo:
        raise typer.BadParameter("give a FOLDER or --demo")
    folder = vocab.demo_vocabulary_dir() if demo else folder
    with open_store() as eng:
        version = store.info(eng).get("cdm_version") or settings().cdm_version
        with progress() as bar:
            task = bar.add_task("vocabulary", total=None)

            def tick(name, done, total):
                bar.update(task, description=name, completed=done, total=total)

            report = vocab.load(eng, folder, version, progress=tick)
    t = Table(title=f"vocabulary {report.version or '(no version row)'} from {folder}")
    t.add_column("table")
    t.add_column("rows in file", justify="right")
    t.add_column("rows loaded", justify="right")
    for name, n in report.files.items():
        t.add_row(name, f"{n:,}", f"{report.loaded[name]:,}")
    out.print(t)
    if report.missing:
        out.print(f"not in this download (left as they were): {', '.join(report.missing)}")
    out.print("row counts verified" if report.verified else "[red]row counts differ[/red]")


@app.command()
def status():
    """Show the store: engine, location, CDM version, vocabulary version, rows per table."""
    from medlake.cdm import store

    with open_store(read_only=True) as eng:
        s = store.status(eng)
    out.print(f"store      {s.url}")
    out.print(f"engine     {s.engine}")
    if not s.cdm_version:
        out.print("CDM        not initialised: run `medlake init`")
        return
    out.print(f"CDM        OMOP v{s.cdm_version}" + ("" if s.cdm_version_from == "from the store's record" else
                                                      f" ({s.cdm_version_from}; a CDM medlake did not create)"))
    concepts = s.counts.get("concept") or 0  # (a CDM imported with its CONCEPT file but no VOCABULARY row)
    out.print("vocabulary " + (s.vocabulary_version or (
        f"{concepts:,} concept(s), its version not recorded (no vocabulary row 'None')" if concepts else
        "not loaded: run `medlake vocab load DIR` or `--demo`")), highlight=False, markup=False)
    t = Table(title="rows per table")
    t.add_column("table")
    t.add_column("rows", justify="right")
    for name, n in s.counts.items():
        if n:
            t.add_row(name, f"{n:,}")
    empty = [n for n, c in s.counts.items() if not c]
    out.print(t)
    out.print(f"{len(empty)} empty table(s)")


# -- ingest: landing, staging, quarantine ------------------------------------------------------------------------
quarantine_app = typer.Typer(help="Records that could not be staged: list, show, retry.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")


def _landing():
    from medlake.landing import Landing
    from medlake.landing.quarantine import Quarantine

    root = settings().landing_dir
    return Landing(root), Quarantine(root)


def _load_sources(path: Optional[Path]):
    from medlake.sources import config as source_config

    return source_config.load(path) if path else None


def _counting_progress() -> Progress:
    from rich.progress import MofNCompleteColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


def _print_ingest_summary(summary) -> None:
    from rich import box

    t = Table(title=f"ingest {summary.batch}", box=box.SIMPLE_HEAD,
              caption="files: received, landed, duplicates (same content, other name), unchanged (already "
              "landed); records: staged, rows, quarantined")
    for c in ("source", "recv.", "landed", "dup.", "same", "staged", "rows", "quar."):
        t.add_column(c, justify="left" if c == "source" else "right", overflow="fold")
    rows = list(summary.sources.items()) + [("total", summary.total())]
    for name, s in rows:
        t.add_row(name, *(f"{v:,}" for v in (s.received, s.landed, s.duplicates, s.unchanged, s.records, s.rows,
                                              sum(s.quarantined.values()))))
    out.print(t)
    q = summary.total().quarantined
    out.print("quarantined by reason: " + (", ".join(f"{k} {v:,}" for k, v in sorted(q.items())) or "none"))
    if q:
        out.print("see `medlake quarantine list`; fix the parser or mapping, then `medlake quarantine retry`")
    if summary.total().superseded:
        out.print(f"{summary.total().superseded:,} message(s) cut off in transit came again whole: their parts' "
                  "quarantine items are resolved (superseded)")
    if summary.ignored:
        out.print(f"{len(summary.ignored):,} file(s) outside every configured source were not ingested, e.g. "
                  f"{summary.ignored[0]}", highlight=False)


@app.command("ingest")
def ingest_cmd(
    paths: Optional[list[Path]] = typer.Argument(None, help="Files or folders to ingest (walked recursively)."),
    sources: Optional[Path] = typer.Option(None, "--sources", help="The site's sources.toml ([[source]] tables)."),
    source: Optional[str] = typer.Option(None, "--source", help="Source name for files no config claims "
                                         "(default: the folder name)."),
):
    """Land files, stage what is new (HL7 v2, FHIR, CSV), quarantine what is bad; print the summary."""
    from medlake.landing import ingest as ingest_mod

    srcs = _load_sources(sources)
    if not paths and not srcs:
        raise typer.BadParameter("give PATH… to ingest, or --sources to ingest every configured source")
    eng = engine()
    land, q = _landing()
    try:
        with _counting_progress() as bar:
            task = bar.add_task("ingest", total=None)

            def tick(desc, done, total):
                bar.update(task, description=desc[:70], completed=done, total=total)

            summary = ingest_mod.ingest(eng, land, q, paths or (), srcs, source, progress=tick)
    finally:
        eng.close()
        land.close()
        q.close()
    _print_ingest_summary(summary)


def _known_source(name: str, sources: Optional[Path], root: Path):
    from medlake.landing import ingest as ingest_mod

    known = {s.name: s for s in _load_sources(sources)} if sources else ingest_mod.known_sources(root)
    if name not in known:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(sorted(known)) or 'none (ingest first)'}")
    return known[name]


@app.command()
def replay(
    source: str = typer.Option(..., "--source", help="The source whose staging is rebuilt."),
    sources: Optional[Path] = typer.Option(None, "--sources", help="sources.toml (default: the config last used)."),
):
    """Rebuild one source's staging tables from landing alone."""
    from medlake.landing import ingest as ingest_mod

    eng = engine()
    land, q = _landing()
    try:
        src = _known_source(source, sources, land.root)
        if sources:
            ingest_mod.remember(land.root, [src])
        with _counting_progress() as bar:
            task = bar.add_task("replay", total=None)
            summary = ingest_mod.replay(eng, land, q, src, progress=lambda d, n, t: bar.update(
                task, description=d[:70], completed=n, total=t))
    finally:
        eng.close()
        land.close()
        q.close()
    _print_ingest_summary(summary)


@quarantine_app.command("list")
def quarantine_list(
    source: Optional[str] = typer.Option(None, "--source", help="Only this source."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Only this reason."),
    all_: bool = typer.Option(False, "--all", help="Resolved items too."),
    limit: int = typer.Option(50, "--limit", help="At most this many (0: all)."),
):
    """Quarantined records: id, source, reason, location."""
    land, q = _landing()
    try:
        items = q.items(source=source, status=None if all_ else "open", reason=reason, limit=limit or None)
        counts = q.counts(source=source, status=None if all_ else "open")
    finally:
        land.close()
        q.close()
    t = Table(title=f"quarantine ({sum(counts.values()):,} {'items' if all_ else 'open'})")
    for c in ("id", "source", "status", "reason", "location", "detail (the last retry's, when one failed)"):
        t.add_column(c, overflow="fold")
    for it in items:
        detail = f"retry {it.attempts}: {it.last_error}" if it.last_error and it.status == "open" else it.detail
        t.add_row(str(it.id), it.source, it.status, it.reason, it.location, detail[:160])
    out.print(t)
    out.print("by reason: " + (", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"))


@quarantine_app.command("show")
def quarantine_show(
    item_id: int = typer.Argument(..., help="Item id (from `medlake quarantine list`)."),
    raw: bool = typer.Option(False, "--raw", help="Write only the raw bytes to stdout."),
):
    """One quarantined record: where, why, and its raw bytes."""
    land, q = _landing()
    try:
        it = q.get(item_id)
    finally:
        land.close()
        q.close()
    if raw:
        sys.stdout.buffer.write(it.raw)
        sys.stdout.buffer.flush()
        return
    for k in ("id", "source", "status", "reason", "detail", "location", "receipt_seq", "landing_sha256",
              "created_at", "attempts", "last_error", "resolved_at", "resolution"):
        v = getattr(it, k)
        if v is not None:
            out.print(f"{k:15}{v}", highlight=False, markup=False)
    text = it.raw[:4000].decode("utf-8", errors="backslashreplace").replace("\r", "\n")
    out.print(f"raw ({len(it.raw):,} bytes{', first 4,000' if len(it.raw) > 4000 else ''}):", highlight=False)
    out.print(text, highlight=False, markup=False)


@quarantine_app.command("retry")
def quarantine_retry(
    ids: Optional[list[int]] = typer.Argument(None, help="Item ids (default: every open item)."),
    source: Optional[str] = typer.Option(None, "--source", help="Only this source."),
    sources: Optional[Path] = typer.Option(None, "--sources", help="sources.toml with the fixed mapping "
                                           "(default: the config last used)."),
):
    """Re-read quarantined records with today's parsers and mappings; stage those that now pass."""
    from medlake.landing import ingest as ingest_mod

    eng = engine()
    land, q = _landing()
    try:
        known = ingest_mod.known_sources(land.root)
        if sources:
            fresh = _load_sources(sources)
            ingest_mod.remember(land.root, fresh)
            known.update({s.name: s for s in fresh})
        r = ingest_mod.retry(eng, land, q, known, source=source, ids=ids or None)
    finally:
        eng.close()
        land.close()
        q.close()
    out.print(f"resolved {r.resolved:,}, still failing {r.still_failing:,}, rows staged {r.rows:,}"
              + (f", new items {r.new_items:,}" if r.new_items else ""))
    for e in r.errors[:5]:
        out.print(f"  {e}", highlight=False, markup=False)


# -- transform: staging -> OMOP CDM, lineage, conformance ---------------------------------------------------------
conformance_app = typer.Typer(help="Golden-case conformance suites.", no_args_is_help=True)
app.add_typer(conformance_app, name="conformance")


def _print_gaps(eng, limit: int = 10) -> None:
    gaps = eng.query("SELECT source, code_system, code, n_rows FROM transform_gap ORDER BY n_rows DESC, source, code "
                     f"LIMIT {limit}").to_pylist() if "transform_gap" in eng.tables() else []
    total = eng.query("SELECT count(*) AS n, COALESCE(sum(n_rows), 0) AS r FROM transform_gap").to_pylist()[0] \
        if gaps else {"n": 0, "r": 0}
    out.print(f"mapping gaps: {total['n']:,} unmapped code(s) in {total['r']:,} CDM row(s) (concept 0)"
              + (f"; top {len(gaps)}:" if gaps else ""), highlight=False)
    for g in gaps:
        out.print(f"  {g['source']}  {g['code_system']}  {g['code']}  {g['n_rows']:,} row(s)", highlight=False,
                  markup=False)


@app.command("transform")
def transform_cmd(full: bool = typer.Option(False, "--full", help="Map every staged record again, not only new ones.")):
    """Staging -> OMOP CDM: new records only, in one transaction; lineage, gaps, derived tables."""
    from medlake.landing import ingest as ingest_mod
    from medlake.transform.run import RULES, transform

    ns = {s.name: s.hospital for s in ingest_mod.known_sources(settings().landing_dir).values() if s.hospital}
    with open_store() as eng:
        with _counting_progress() as bar:
            task = bar.add_task("transform", total=None)
            s = transform(eng, namespaces=ns, full=full, site=settings().cdm_source,
                          progress=lambda d, i, n: bar.update(task, description=d[:70], completed=i, total=n))
        release = (f"a new vocabulary release since the last run ({', '.join(s.vocabularies_changed[:8])}"
                   f"{', …' if len(s.vocabularies_changed) > 8 else ''})")
        if s.run_id is None:
            out.print(f"{release}: no code maps differently, the eras were rebuilt" if s.vocabularies_changed else
                      "nothing new in staging: the CDM is unchanged", highlight=False)
        else:
            t = Table(title=f"transform run {s.run_id}")
            t.add_column("CDM table")
            t.add_column("rows written", justify="right")
            for name, n in s.written.items():
                t.add_row(name, f"{n:,}")
            out.print(t)
            if s.rules_upgraded:
                out.print(f"the store was mapped by the rules of {s.rules_upgraded}: every record was mapped again "
                          f"once, so no row keeps what the rules of {RULES[-1]} keep out of the CDM "
                          "(docs/transform.md)", highlight=False)
            if s.vocabularies_changed:
                out.print(f"{release}: " + ("every record was mapped again" if s.codes_changed is None else
                                            f"{s.codes_changed:,} code(s) map differently, their records were "
                                            "mapped again and every person's eras rebuilt"), highlight=False)
            out.print(f"{s.records:,} source record(s), {s.deleted:,} row(s) replaced, {s.persons:,} person(s) "
                      f"touched, {s.skipped:,} event(s) without person or date skipped, {s.seconds:.1f} s",
                      highlight=False)
        _print_gaps(eng)


@conformance_app.command("fhir2omop")
def conformance_fhir2omop(folder: Path = typer.Argument(..., help="Folder of fhir2omop case files (*.json)."),
                          verbose: bool = typer.Option(False, "--verbose", "-v", help="Say why each variant failed.")):
    """Run FHIR->OMOP golden cases on a fresh store; pass/fail per variant and totals; exit 0 only if all pass."""
    from medlake.transform.conformance import run

    if not folder.exists():
        raise ValueError(f"{folder}: no such folder")
    with _counting_progress() as bar:
        bar.add_task("running cases", total=None)
        results = run(folder)
    for v in results:
        mark = "[green]pass[/green]" if v.passed else "[red]FAIL[/red]"
        out.print(f"{mark} {v.file} #{v.index} {v.desc[:90]}", highlight=False)
        if verbose and not v.passed:
            for p in v.problems[:4]:
                out.print(f"       {p}", highlight=False, markup=False)
    passed = sum(v.passed for v in results)
    out.print(f"{passed} of {len(results)} variant(s) passed, {len(results) - passed} failed "
              "(documented differences: docs/fhir2omop-differences.md)")
    if passed != len(results):
        raise typer.Exit(1)


@app.command("trace")
def trace_cmd(table: str = typer.Argument(..., help="CDM table, e.g. measurement."),
              row_id: int = typer.Argument(..., help="The row's id (its primary key).")):
    """Print the chain from a CDM row back to the landing receipt it came from, and the rows it names that do not
    exist."""
    from medlake.landing import Landing
    from medlake.landing.quarantine import Quarantine
    from medlake.transform.trace import dangling, patient_ids, trace

    eng = engine(read_only=True)
    root = settings().landing_dir
    land = Landing(root) if Path(root).exists() else None
    try:
        chain = trace(eng, table, row_id, land)
        missing = dangling(eng, table, row_id)
        known = {v: patient_ids(eng, v) for _, v, target in missing if target == "person"}
    finally:
        eng.close()
        if land is not None:
            land.close()
    for r in chain:
        out.print(f"{r['cdm_table']} {r['row_id']}  (person {r['person_id']})", highlight=False)
        if r.get("derived"):
            out.print(f"  <- computed by `medlake transform` from the events of person {r['person_id']} (rebuilt "
                      "whenever they change): no source record of its own; trace those events, e.g. `medlake trace "
                      "condition_occurrence ID`", highlight=False, markup=False)
            continue
        out.print(f"  <- rule {r['rule']}, run {r['run_id']} at {r['run_at']}", highlight=False)
        if r["code"] is not None:
            out.print(f"  <- code {r['code_system']} {r['code']} -> concept {r['concept_id']}", highlight=False,
                      markup=False)
        out.print(f"  <- source {r['source']}, record {r['record_key']}, message/resource id {r['message_id']}, "
                  f"at {r['record_location']}", highlight=False, markup=False)
        rec = r.get("receipt")
        where = f", file {rec['original_name']}, received {rec['received_at']}, batch {rec['batch']}" if rec else \
            " (not in this site's landing)"
        out.print(f"  <- landing receipt {r['receipt_seq']} sha256 {r['landing_sha256']}{where}", highlight=False,
                  markup=False)
    for field_, value, target in missing:  # what isForeignKey reports, and where to look
        if target != "person":
            out.print(f"{field_} {value} names no {target.upper()} row: the record that describes it has not been "
                      f"mapped (never sent, or in quarantine: `medlake quarantine list`).", highlight=False,
                      markup=False)
            continue
        held, ids = "", known[value]
        if (Path(root) / "quarantine.sqlite").exists():
            q = Quarantine(root)
            try:
                n, naming = sum(q.counts().values()), q.naming(ids)
            finally:
                q.close()
            shown = "; ".join(f"{x.id} ({x.reason}, {x.source}, {x.location})" for x in naming[:10])
            held = (f" Open quarantine item(s) naming this patient ({', '.join(ids)}): {shown}"
                    f"{f'; and {len(naming) - 10:,} more' if len(naming) > 10 else ''}. A patient record among "
                    "them comes in once fixed (`medlake quarantine show ID`, then `medlake quarantine retry`)."
                    if naming else
                    f" No open quarantine item names this patient ({', '.join(ids) or 'no source id found'}): its "
                    "record was probably never sent, or broke before its id; ask its source system (the quarantine "
                    f"holds {n:,} open item(s): `medlake quarantine list`).")
        out.print(f"person {value} has no PERSON row: no record of this patient with a birth date or year (a FHIR "
                  "Patient, an HL7 PID, …; OMOP's PERSON needs the year of birth) has been staged, from any "
                  f"source.{held} Once one is, `medlake transform` (after `medlake empi run` where the site links "
                  "identities) writes the person.", highlight=False, markup=False)


@quality_app.command("run")
def quality_run(
    out_dir: Path = typer.Option(Path("quality"), "--out", help="Folder for quality/<run-id>/ reports."),
    fail_on: Optional[float] = typer.Option(
        None, "--fail-on", metavar="PERCENT", parser=_percent,
        help="Exit 3 when failed checks (plus errors) exceed this percent of checks with a result (0: any)."),
    fail_on_new: bool = typer.Option(
        False, "--fail-on-new",
        help="Exit 3 when a check fails or stops with an error that did not in the store's previous run of the same "
             "scope, a feed check finds more silent or low days than then, or a table that held rows then is empty "
             "(a run this refused is not compared with: a retry is refused again)."),
    site_checks: Optional[Path] = typer.Option(None, "--checks", help="Site-defined checks (TOML)."),
    site_timeout: Optional[float] = typer.Option(
        None, "--site-timeout", metavar="SECONDS", min=1,
        help="Stop a query of site checks after this many seconds: a predicate that would scan for ever is its "
             "check's error, and the run goes on (default: no limit)."),
    full: bool = typer.Option(
        False, "--full", help="Re-check every table (default: only tables that changed; a stopped run's tables too)."),
    tables: Optional[str] = typer.Option(None, "--tables", help="Only these tables (comma-separated)."),
    exclude: Optional[str] = typer.Option(
        None, "--exclude",
        help="Tables not to check (comma-separated; default: the vocabulary tables, as DQD; 'none': check all)."),
    cdm_version: Optional[str] = typer.Option(
        None, "--cdm-version", help="OMOP CDM version of the store: 5.4 or 5.3 (default: read from the store)."),
    check_names: Optional[str] = typer.Option(
        None, "--check-names", metavar="NAMES",
        help="Only checks of these types, comma-separated (DQD's checkNames), e.g. isForeignKey,plausibleDuringLife."),
    write_table: Optional[str] = typer.Option(
        None, "--write-table", metavar="NAME",
        help="Also put the DQD checks' results in table NAME of the store, in DQD's layout (e.g. "
             "dqdashboard_results, as DQD's writeToTable); its rows are replaced each run. It is made in the store's "
             "first schema: on PostgreSQL name the results schema first on the search path."),
    check_levels: Optional[str] = typer.Option(
        None, "--check-levels", metavar="LEVELS",
        help="Only checks of these levels, comma-separated (DQD's checkLevels): TABLE, FIELD, CONCEPT, and SOURCE "
             "(medlake's source-level checks)."),
    check_severity: Optional[str] = typer.Option(
        None, "--check-severity", metavar="SEVERITIES",
        help="Only checks of these severities, comma-separated (DQD's checkSeverity): fatal, convention, "
             "characterization; source and feed for medlake's source-level checks; site for the site's own (--checks) "
             "without a severity of their own."),
    cohort_id: Optional[int] = typer.Option(
        None, "--cohort-id", metavar="ID",
        help="Check only the rows of this cohort's persons (DQD's cohortDefinitionId), from --cohort-table."),
    cohort_table: Optional[str] = typer.Option(
        None, "--cohort-table", metavar="TABLE",
        help="The cohort table (DQD's cohortDatabaseSchema.cohortTableName): NAME or SCHEMA.NAME (default cohort)."),
    dqd_thresholds: Optional[str] = typer.Option(
        None, "--dqd-thresholds", metavar="FILES",
        help="The site's own copies of DQD's threshold files (Table_Level, Field_Level, Concept_Level CSV; "
             "comma-separated), as DQD's tableCheckThresholdLoc, fieldCheckThresholdLoc, conceptCheckThresholdLoc."),
):
    """Run every DQD check (and the site's checks); write results.json, report.html and dqd.json (DQD's format).

    Exit 0 when the run is made (checks may fail), 3 when --fail-on or --fail-on-new is crossed, 1 when the run
    cannot be made, 2 for a wrong option (or one naming no table, check, level, severity or version), 130 when
    interrupted.

    On the store --store URL names (here or before the command; an existing OHDSI database is checked in place),
    else MEDLAKE_STORE, else medlake.toml."""
    from rich.markup import escape

    from medlake.quality import report, runner, site

    for name, value in (("--tables", tables), ("--exclude", exclude), ("--check-names", check_names),
                        ("--check-levels", check_levels), ("--check-severity", check_severity),
                        ("--write-table", write_table), ("--dqd-thresholds", dqd_thresholds),
                        ("--cohort-table", cohort_table)):
        if value is not None and not value.replace(",", "").strip():  # (a pipeline's unset variable)
            raise config_mod.OptionError(f"{name} is empty: give a value, or leave the option out"
                                         + ("; --exclude none checks every table" if name == "--exclude" else ""))
    if cohort_table is not None and cohort_id is None:
        raise config_mod.OptionError("--cohort-table names where the cohort of --cohort-id is: give --cohort-id too")
    cdm_version = cdm_version.strip().lower().removeprefix("v") if cdm_version else None  # (v5.4, as sites write it)
    from medlake.cdm import model

    if cdm_version and cdm_version not in model.VERSIONS:
        raise config_mod.OptionError(f"--cdm-version: no OMOP CDM version {cdm_version}: the versions are "
                                     f"{', '.join(model.VERSIONS)}")
    cohort_table = cohort_table or "cohort"
    extra, feed, fields, tuning = site.load(site_checks) if site_checks else ([], None, {}, {})
    if site_checks and not (extra or feed or fields or any(tuning.values())):
        _warn([f"{site_checks} holds no [[check]], [feed], [source_fields], [thresholds] or [notes]: nothing of it is "
               "used (an empty file, or all of it commented out?)"])
    with open_store(read_only=not write_table) as eng:
        with _counting_progress() as bar:  # tables
            task = bar.add_task("quality", total=None)

            def tick(name, done, total):
                bar.update(task, description=name, completed=done, total=total)

            r = runner.run(eng, cdm_version, out_dir, site_checks=extra, feed=feed, source_fields=fields,
                           incremental=not full, resume=not full, progress=tick, write_table=write_table,
                           tuning=tuning,
                           fail_on_new=fail_on_new, site_timeout=site_timeout, site_file=site_checks,
                           notice=lambda m: err.print(f"note: {m}", highlight=False, markup=False, soft_wrap=True),
                           check_names=_items(check_names), check_levels=_items(check_levels),
                           check_severity=_items(check_severity),
                           dqd_thresholds=_items(dqd_thresholds) or (),
                           cohort=(cohort_table, cohort_id) if cohort_id is not None else None,
                           only=_items(tables) if tables else None,
                           exclude=None if exclude is None else [t for t in _items(exclude) if t.lower() != "none"])
    s = r.summary
    t = Table(title=f"data quality, run {s['run_id']} (OMOP CDM v{s['cdm_version']}, {s['cdm_version_from']})")
    for col in ("category", "passed", "failed", "errors", "not applicable", "pass rate"):
        t.add_column(col, justify="left" if col == "category" else "right")
    for name, v in list(s["by_category"].items()) + [("all", s)]:
        rate = report.percent(v["pass_rate"]) or "n/a"
        t.add_row(name, str(v["passed"]), str(v["failed"]), str(v["errors"]), str(v["not_applicable"]), rate)
    out.print(t)
    worst = report.failed_first(r.results)
    if worst:
        title = f"failed checks, worst first ({min(len(worst), 10)} of {len(worst)}; all in the report)"
        head = ("check", "violated", "% > threshold")
        rows = [(x["check_id"], f"{x['num_violated_rows']:,} of {report.counted(x, x['num_denominator_rows'])}",
                 f"{100 * x['pct_violated_rows']:.2f} > {x['threshold']:g}") for x in worst[:10]]
        if out.width >= sum(max(len(r[i]) for r in [head, *rows]) for i in range(3)) + 10:  # (borders, padding)
            t = Table(title=title)
            for col in head:
                t.add_column(col, justify="left" if col == "check" else "right", overflow="fold")
            for row in rows:  # the id names the table and field (report.where has the source and concept)
                t.add_row(*row)
            out.print(t)
        else:  # a narrow terminal: each id on a line of its own (folded in a table, it cannot be copied into `show`)
            out.print(title + ":", highlight=False, markup=False)
            for check_id, violated, pct in rows:
                out.print(check_id, highlight=False, markup=False, soft_wrap=True)
                out.print(f"    {violated}, % > threshold: {pct}", highlight=False, markup=False)
        at = report.run_at(out_dir, s["store"] if state.store else None)  # where `show` finds the run (a store
        out.print(f"a check's rows and what to do: medlake quality show CHECK_ID{at}",  # given by --store: named)
                  highlight=False, markup=False, soft_wrap=True)
    silent = report.silent_now(r.results)
    if silent:  # (the ongoing outage first, whatever its share of the source's history)
        out.print("feeds silent now: " + "; ".join(silent), highlight=False, markup=False)
    errs = [x for x in r.results if x["status"] == "error"]
    if errs:  # the checks that measured nothing, named (the summary only counted them)
        t = Table(title=f"checks that could not run ({min(len(errs), 10)} of {len(errs)}; all in the report)")
        for col in ("check", "error"):
            t.add_column(col, overflow="fold")
        for x in errs[:10]:
            t.add_row(x["check_id"], escape((x.get("error") or "").strip().splitlines()[0] if x.get("error") else ""))
        out.print(t)
    if fail_on_new and not s.get("since_last_run"):
        out.print("since run: none to compare with (the store's first run of this scope): nothing is new",
                  highlight=False)
    if s.get("since_last_run"):
        d = s["since_last_run"]
        errors = f", {len(d['new_errors'])} new error(s)" if d.get("new_errors") else ""
        days = f", {len(d['more_days'])} feed check(s) with more days" if d.get("more_days") else ""
        emptied = f"; emptied since: {', '.join(d['emptied'])}" if d.get("emptied") else ""
        ruled = f"; {len(d['rule_changed'])} site check(s) changed their rule since (the site's checks file): " \
            "their change is of the rule, not of the data (medlake quality diff)" if d.get("rule_changed") else ""
        out.print(f"since run {d['run_id']}: {len(d['new_failures'])} new failure(s){errors}{days}, "
                  f"{len(d['fixed'])} fixed{emptied}{ruled}", highlight=False, markup=False)
    resumed = f", resumed {len(s['resumed_tables'])} from the interrupted run" if s.get("resumed_tables") else ""
    out.print(f"{s['checks']} checks in {s['seconds']} s, {s['queries']} queries; rechecked "
              f"{len(s['rechecked_tables'])} table(s), reused {len(s['reused_tables'])} unchanged{resumed}")
    if s["excluded_tables"]:
        why = "--exclude" if exclude is not None else "the vocabulary, as DQD; --exclude none checks them"
        out.print(f"not checked ({why}): {', '.join(s['excluded_tables'])}", highlight=False)
    if s.get("tables"):
        out.print(f"only the tables (--tables): {', '.join(s['tables'])}", highlight=False)
    if s.get("dqd_thresholds"):
        out.print("DQD's rules and thresholds from the site's files (--dqd-thresholds): "
                  + ", ".join(s["dqd_thresholds"]), highlight=False)
    if s.get("check_names"):
        out.print(f"only the check types (--check-names): {', '.join(s['check_names'])}", highlight=False)
    if s.get("check_levels"):
        out.print(f"only the check levels (--check-levels): {', '.join(s['check_levels'])}", highlight=False)
    if s.get("check_severity"):
        out.print(f"only the check severities (--check-severity): {', '.join(s['check_severity'])}", highlight=False)
    if s.get("cohort"):
        c = s["cohort"]
        out.print(f"only the rows of cohort {c['cohort_definition_id']}'s {c['subjects']:,} person(s) ({c['table']}; "
                  "no source-level checks)", highlight=False)
    _warn(s.get("warnings", []))
    out.print(f"results: {r.dir / 'results.json'}", highlight=False)
    out.print(f"report:  {r.dir / 'report.html'}", highlight=False)
    if s.get("dqd_table"):
        out.print(f"table:   {s['dqd_table']['table']} ({s['dqd_table']['rows']} DQD check results, DQD's layout)",
                  highlight=False)
    since = s.get("since_last_run") or {}
    new, broken, emptied = since.get("new_failures", []), since.get("new_errors", []), since.get("emptied", [])
    days = since.get("more_days", [])
    crossed = False
    if fail_on_new and (new or days or broken or emptied):
        names = lambda ids: f"{', '.join(ids[:3])}{', …' if len(ids) > 3 else ''}"  # noqa: E731
        ruled = [x for x in new if x in (since.get("rule_changed") or ())]
        said = ([f"{len(new)} check(s) failed that did not fail in run {since['run_id']}: {names(new)} (the report "
                 "marks them 'new')" + (f"; of them, {len(ruled)} site check(s) whose rule changed since: "
                                        f"{names(ruled)}" if ruled else "")] if new else []) + (
            [f"{len(days)} feed check(s) failing in run {since['run_id']} find more days now (a source silent or low "
             f"again): {names(days)}"] if days else []) + (
            [f"{len(broken)} check(s) could not run that could in run {since['run_id']}: {names(broken)}"]
            if broken else []) + (
            [f"table(s) {names(emptied)} held rows in run {since['run_id']} and are empty or gone now: their checks "
             "are not applicable (an ETL that emptied them and stopped?)"] if emptied else [])
        err.print("error: " + "; ".join(said), highlight=False, markup=False, soft_wrap=True)
        crossed = True
    if fail_on is not None:
        judged = s["passed"] + s["failed"] + s["errors"]
        bad = 100 * (s["failed"] + s["errors"]) / judged if judged else 0.0
        if bad > fail_on:
            err.print(f"error: {bad:.2f}% of checks failed or could not run, above --fail-on {fail_on:g}%",
                      highlight=False, markup=False)
            crossed = True
    if crossed:  # (3, not 1: a pipeline tells data that crossed its gate from a run that could not be made)
        raise typer.Exit(3)


@quality_app.command("runs")
def quality_runs(
    out_dir: Path = typer.Option(Path("quality"), "--out", help="Folder of the quality runs."),
    last: int = typer.Option(20, "--last", min=1, help="Show this many of the latest runs."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the runs' summaries (run.json, with the folder of each as `dir`) as one JSON list, "
                              "latest last: for a pipeline (`jq '.[-1].dir'` is the latest run)."),
):
    """This store's finished quality runs, oldest first: pass rate, failed checks, what failed anew and what was
    fixed since the run each was compared with (the one before of its scope that --fail-on-new did not refuse)."""
    from rich import box

    from medlake.config import redact
    from medlake.engines import store_url
    from medlake.quality import report, runner

    store = redact(store_url(settings().store))  # the store is not opened: its runs' files name it
    _warn(runner.damaged_runs(out_dir))
    runs = runner.history(out_dir, store)
    if not runs:
        raise ValueError(f"no finished quality run of {store} in {out_dir}" + (
            runner.other_stores(out_dir, store) or ": run `medlake quality run` first"))
    if as_json:
        import json

        print(json.dumps([dict(s, dir=str(Path(out_dir) / s["run_id"])) for s in runs[-last:]], indent=1))
        return
    t = Table(title=f"quality runs of {store} ({min(last, len(runs))} of {len(runs)})", box=box.SIMPLE_HEAD,
              padding=(0, 1, 0, 0), pad_edge=False)
    for col in ("run (started, UTC)", "checks", "pass", "failed", "err", "new", "fixed", "tables", "s"):
        t.add_column(col, justify="left" if col.startswith("run") else "right", no_wrap=True)
    for s in runs[-last:]:
        d = s.get("since_last_run") or {}
        rate = report.percent(s["pass_rate"]) or "n/a"
        t.add_row(s["run_id"] + ("*" if runner.partial(s) else ""), str(s["checks"]), rate, str(s["failed"]),
                  str(s["errors"]),
                  str(len(d["new_failures"]) + len(d.get("new_errors") or ()) + len(d.get("more_days") or ()))
                  if d else "-",
                  str(len(d["fixed"])) if d else "-",
                  str(len(s["rechecked_tables"])), f"{s['seconds']:.1f}")
    out.print(t)
    out.print("pass: passed / (passed + failed + errors); new: checks failed or in error that were not in the run "
              "before, and feed checks that find more days; fixed: failed before, not now; tables: re-checked "
              "(the others were unchanged); *: some tables, check types, levels or severities, or a cohort, only",
              highlight=False)
    out.print(f"a run's report: {Path(out_dir) / runs[-1]['run_id'] / 'report.html'} (and the others beside it)",
              highlight=False)


@quality_app.command("diff")
def quality_diff(
    before: Optional[str] = typer.Argument(None, help="A run id (default: the run the later one compared itself with)."),
    after: Optional[str] = typer.Argument(None, help="A later run id (default: the latest)."),
    out_dir: Path = typer.Option(Path("quality"), "--out", help="Folder of the quality runs."),
    limit: int = typer.Option(40, "--limit", min=1, help="Show at most this many changed checks."),
):
    """What changed between two quality runs of this store: checks newly failing, fixed, failing with more or fewer
    rows, or otherwise changed."""
    import json

    from rich import box

    from medlake.config import redact
    from medlake.engines import store_url
    from medlake.quality import report, runner

    store = redact(store_url(settings().store))  # the store is not opened: its runs' files name it
    _warn(runner.damaged_runs(out_dir))
    runs = {d.name: d for d in runner.finished_runs(out_dir, store)}
    names = list(runs)
    b = after or (names[-1] if names else None)
    for rid in (before, after):
        if rid is not None and rid not in runs:
            raise ValueError(f"no finished run {rid} of {store} in {out_dir}" + (
                runner.other_stores(out_dir, store) or " (medlake quality runs lists them)"))
    a = before
    if a is None and b is not None:  # the run b compared itself with (its scope's previous one), else the one before
        a = (json.loads((runs[b] / "run.json").read_text()).get("since_last_run") or {}).get("run_id") or (
            names[names.index(b) - 1] if names.index(b) else None)
    if a is None or b is None:
        raise ValueError(f"fewer than two finished quality runs of {store} in {out_dir}: run `medlake quality run` "
                         "again, or name two runs")
    results = [json.loads((runs[r] / "results.json").read_text()) for r in (a, b)]
    summaries = [json.loads((runs[r] / "run.json").read_text()) for r in (a, b)]
    if runner.scope(summaries[0]) != runner.scope(summaries[1]):  # a run of a table or a cohort against a whole run
        both = {x["check_id"] for x in results[0]} & {x["check_id"] for x in results[1]}
        results = [[x for x in rs if x["check_id"] in both] for rs in results]
        out.print(f"note: the runs checked different things ({'; '.join(map(_scope_words, summaries))}): "
                  f"the {len(both):,} checks both ran are compared", highlight=False, markup=False)
    if names.index(a) > names.index(b):
        out.print(f"note: run {a} is the later one: the changes read back in time", highlight=False, markup=False)
    changes = runner.compare(*results)
    counts = {k: sum(c["change"] == k for c in changes) for k in runner.CHANGES}
    out.print(f"from run {a} to run {b}: " + ", ".join(f"{n} {k}" for k, n in counts.items()), highlight=False)
    if not changes:
        return
    t = Table(title=f"changed checks ({min(limit, len(changes))} of {len(changes)}, the worst first)",
              box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    for col in ("change", "check (where)", "before", "after"):
        t.add_column(col, overflow="fold")

    def status(c, s, v):
        return s if s in ("not run", "not_applicable", "error") or v is None else \
            f"{s}: {report.counted(c['result'], v)}"

    from rich.markup import escape

    for c in changes[:limit]:  # (escaped: "[concept 3013721]" was read as a style and vanished)
        ruled = "\nits rule changed between the runs (the site's checks file)" if c["rule_changed"] else ""
        t.add_row(c["change"], escape(f"{c['check_id']}\n({report.where(c['result'])}){ruled}"),
                  status(c, c["before"], c["violated_before"]), status(c, c["after"], c["violated_after"]))
    out.print(t)


def _scope_words(summary: dict) -> str:
    """What a run checked (its run.json: the fields runner.scope compares) in a few words."""
    from medlake.quality import runner

    said = [f"{what} {', '.join(map(str, summary[key]))}" for what, key in (
        ("tables", "tables"), ("checks", "check_names"), ("levels", "check_levels"), ("severities", "check_severity"))
        if summary.get(key)]
    said += [f"the cohort {summary['cohort']['cohort_definition_id']}"] if summary.get("cohort") else []
    files = [Path(f).name for f in runner.site_files(summary) if f]
    said += [f"the site's files {', '.join(files)}"] if files else []
    return f"v{summary.get('cdm_version')}: " + ("; ".join(said) if said else "the whole suite")


@quality_app.command("show")
def quality_show(
    check_id: str = typer.Argument(..., help="A check id, as results.json and the report name it."),
    rows: int = typer.Option(10, "--rows", min=0, help="Show up to this many violating rows (0: none)."),
    out_dir: Path = typer.Option(Path("quality"), "--out", help="Folder of the quality runs."),
    site_checks: Optional[Path] = typer.Option(None, "--checks", help="Site-defined checks (TOML)."),
    cdm_version: Optional[str] = typer.Option(None, "--cdm-version", help="OMOP CDM version (default: as the last run)."),
):
    """One check: its result in the latest run, its query alone (DQD's shape, the store's dialect) and its
    violating rows — from a failure in the report to the rows behind it."""
    import json

    import pyarrow as pa

    from medlake.cdm import store
    from medlake.config import redact
    from medlake.quality import compile as cp, report, runner, site

    extra = site.load(site_checks)[0] if site_checks else []
    with open_store(read_only=True) as eng:
        last, run_summary = None, {}
        files, cohort = [], None  # the site's DQD threshold files and the cohort the run used
        _warn(runner.damaged_runs(out_dir))
        runs = runner.finished_runs(out_dir, redact(eng.url))
        series = None  # a feed check's days: its source's feedVolume result in the same run
        every = [d for d in reversed(runs) if not json.loads((d / "run.json").read_text()).get("cohort")]
        for d in every + [d for d in reversed(runs) if d not in every]:  # the latest run of every person's rows first
            results = json.loads((d / "results.json").read_text())  # (an ad-hoc run of a cohort's said "passed")
            last = next((r for r in results if r["check_id"] == check_id), None)
            if last:
                if last["check_name"] in ("feedTimeliness", "feedVolume"):
                    series = next((r for r in results if r["check_name"] == "feedVolume" and r.get("daily_counts")
                                   and (r["data_source"], r["cdm_table"]) == (last["data_source"], last["cdm_table"])),
                                  None)
                s = run_summary = json.loads((d / "run.json").read_text())
                last["run_id"], version, files = d.name, s["cdm_version"], s.get("dqd_thresholds") or []
                cohort = (s["cohort"]["table"], s["cohort"]["cohort_definition_id"]) if s.get("cohort") else None
                break
        version = cdm_version or (version if last else store.detect_version(eng)[0])
        try:
            r = runner.Runner(eng, version, out_dir, site_checks=extra, dqd_thresholds=files, cohort=cohort)
            with r.restricted():  # (a cohort's run: the store as the run saw it)
                c, count, listed = r.check_queries(check_id, rows)
        except KeyError:
            if not last:
                where = (f", and no finished run of this store in {out_dir} to look in (--out names the folder of its "
                         "runs)" if not runs else f" nor in its runs in {out_dir}: the check ids are in results.json "
                         "and the report")
                import difflib

                known = {x.id for x in r.dqd_checks()} | {x.id for x, _ in extra}
                like = difflib.get_close_matches(check_id.lower(), known, 1, 0.85)
                where += f"; did you mean {like[0]}?" if like else ""
                raise ValueError(f"no check {check_id} in OMOP CDM v{version} (nor in --checks){where}") from None
            c = count = listed = None  # in the run, not a CDM check: medlake's source-level checks (staging, landing)
        except cp.NotApplicable as e:
            raise ValueError(f"{check_id} does not apply to this store: {e}") from None
        about = last or runner.result(c, "not_applicable")  # the check, worded as the report words it
        out.print(f"{check_id}: {about['check_name']} on {report.where(about)}", highlight=False, markup=False)
        own = f" (the site's; the check's own {about['default_threshold']:g}%)" if "default_threshold" in about else ""
        kind = ("" if c else "; a check of the site's: give its file with --checks for its query and rows"
                if about.get("source") == "site" else "; one of medlake's source-level checks (staging, landing, "
                "lineage): its rows are the examples below, it has no query of its own")
        out.print(f"{about['category']} / {about['subcategory'] or '-'} / {about['context']}; threshold "
                  f"{about['threshold']:g}%{own}{kind}", highlight=False, markup=False)
        if about.get("description"):
            out.print(about["description"], highlight=False, markup=False)
        if about.get("notes"):
            out.print(f"note: {about['notes']}", highlight=False, markup=False)
        if last:
            pct = "" if last["pct_violated_rows"] is None else f" ({100 * last['pct_violated_rows']:.4g}%)"
            seen = (f"{last['num_violated_rows']:,} of {report.counted(last, last['num_denominator_rows'])}{pct}"
                    if last["num_denominator_rows"] is not None else last.get("not_applicable_reason") or last["error"] or "")
            out.print(f"run {last['run_id']}: {last['status']} — {seen}", highlight=False, markup=False)
            if c is not None and last.get("rule") and last["rule"] != runner.rule_of(c):
                out.print(f"note: {site_checks.name if site_checks else 'the checks file'} has changed this "
                          f"check's rule since run {last['run_id']}: the query below is the file's, the counts above "
                          "the run's; a run counts it anew", highlight=False, markup=False)
            if c is None and last.get("examples"):
                out.print(f"examples ({last.get('example_field') or 'id'}): {', '.join(last['examples'])}",
                          highlight=False, markup=False)
            for line in report.daily_text(series) if series else []:
                out.print(line, highlight=False, markup=False, soft_wrap=True)
            own = run_summary.get("medlake_store", True)  # (else what to do in the site's own ETL)
            step = report.next_step(last, own, out_dir) if last["status"] == "failed" else None
            if last["status"] == "error":  # a column of its table not of the CDM's type explains most errors
                step = next(iter(runner.type_warnings(run_summary.get("mismatched_columns") or [], eng.name,
                                                      last["cdm_table"])), None)
            if step:
                out.print(f"what to do: {step}", highlight=False, markup=False)
        else:
            out.print(f"no run in {out_dir} has checked it yet (medlake quality run)", highlight=False)
        if count:
            out.print("\n-- the check alone, in the shape of DQD's queries:", highlight=False, markup=False)
            out.print(eng.native(count), highlight=False, markup=False, soft_wrap=True)
        if listed and rows:
            out.print("\n-- its violating rows:", highlight=False, markup=False)
            out.print(eng.native(listed), highlight=False, markup=False, soft_wrap=True)
            if cohort:
                out.print(f"(run of cohort {cohort[1]} of {cohort[0]}: its tables read as their rows of the cohort's "
                          "persons, and so are the rows below)", highlight=False, markup=False)
            with r.restricted():
                got = eng.query(listed)
            t = Table(title=f"violating rows (up to {rows})")
            for name in got.column_names:
                t.add_column(name)
            try:
                shown = got.to_pylist()
            except (OverflowError, ValueError):  # a date Python has no day for (past 9999): as Arrow writes it
                shown = pa.table([c.cast(pa.string()) if pa.types.is_temporal(c.type) else c for c in got.columns],
                                 names=got.column_names).to_pylist()
            for r in shown:
                t.add_row(*("" if v is None else str(v) for v in r.values()))
            out.print(t if got.num_rows else "none", highlight=False)


@cdm_app.command("import")
def cdm_import(
    folder: Path = typer.Argument(..., help="Folder with one CSV or Parquet file per CDM table (e.g. person.csv), "
                                  "or a folder of part files per table (measurement/part-0.parquet, as Spark "
                                  "writes)."),
    version: Optional[str] = typer.Option(None, "--version", help="OMOP CDM version of the files: 5.4 or 5.3 "
                                          "(default: the store's; else the one the files' tables and columns are of; "
                                          "else the configured one)."),
    delimiter: str = typer.Option(",", "--delimiter", help="CSV field separator (use '\\t' for tab)."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Character encoding of the CSV files (e.g. cp1252, "
                                 "latin-1, gb18030, utf-16); a value not in it goes to quarantine."),
    nulls: list[str] = typer.Option([], "--null", help="A text that means empty in the CSV files (and Parquet text "
                                    "columns) besides the empty text, as SQL Server writes NULL and R writes NA "
                                    "(repeat for more)."),
    decimal: str = typer.Option(".", "--decimal", help="The decimal mark of the CSV files' numbers: '.' or ',' (as "
                                "European exports write 7,5; with --delimiter ';', or quoted: \"7,5\")."),
    date_format: Optional[str] = typer.Option(None, "--date-format", help="How the files write dates besides "
                                              "YYYY-MM-DD, as strptime does: '%m/%d/%Y' (1/31/2020), '%d.%m.%Y' "
                                              "(31.01.2020); a time after a date is read too (HH:MM[:SS] [AM/PM])."),
    skip_unknown: bool = typer.Option(False, "--skip-unknown-columns", help="Leave out columns that are no field "
                                      "of their table (a site's own), each named in a warning, instead of stopping."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first row that cannot be imported (nothing "
                                "is imported) instead of setting it aside in quarantine."),
    max_bad: int = typer.Option(1000, "--max-bad-rows", min=0, help="Stop (nothing imported) when more rows than "
                                "this cannot be imported: the files are then not in the form expected."),
):
    """Load an existing OMOP CDM (CSV or Parquet, one file per table) into the store, streamed via Arrow.

    A row that cannot be imported (a value not of its field's type, an empty required field, a CSV line with the
    wrong number of fields) goes to quarantine with its file, line and field; the rest loads. Importing a table
    again resolves its earlier quarantined rows (the file replaces the table). Text longer than the spec's length
    for its field is cut to it (as the CDM's tables hold it), with a warning naming the field; so is a NULL kept as
    text (give --null NULL if it means empty)."""
    from medlake.cdm import importer, model
    from medlake.cdm import store as cdm_store
    from medlake.landing.quarantine import Quarantine

    delimiter = delimiter.replace("\\t", "\t")
    with open_store() as eng:
        # the store's version; else the one the files are of (their tables and columns); else the configured one
        held = cdm_store.info(eng).get("cdm_version")  # (the store's record before the import makes one)
        before = cdm_store.info(eng).get(importer.IMPORTED)  # the folder of the store's earlier import, if any
        version = (version or held or importer.files_version(folder, delimiter, encoding) or settings().cdm_version)
        q = Quarantine(settings().landing_dir)

        def set_aside(files, bad):
            _quarantine_import(q, folder, files, bad)

        try:
            with _counting_progress() as bar:  # tables
                task = bar.add_task("import", total=None)

                def tick(name, done, total):
                    bar.update(task, description=name, completed=done, total=total)

                report = importer.import_folder(eng, folder, version, delimiter=delimiter, encoding=encoding,
                                                nulls=tuple(nulls), decimal=decimal, dates=date_format,
                                                progress=tick, strict=strict, max_bad=max_bad,
                                                skip_unknown=skip_unknown,
                                                set_aside=set_aside)
        finally:
            q.close()
        counts = cdm_store.status(eng).counts  # (tables not in the folder keep the rows they held)
    t = Table(title=f"OMOP CDM v{version} imported from {folder}")
    t.add_column("table")
    t.add_column("file")
    t.add_column("rows", justify="right")
    bad = {name: r.bad for name, r in report.items() if r.bad}
    if bad:
        t.add_column("quarantined", justify="right")
    for name, r in report.items():
        t.add_row(name, r.path.name + ("/" if r.path.is_dir() else ""), f"{r.rows:,}",
                  *([f"{r.bad:,}" if r.bad else ""] if bad else []))
    out.print(t)
    cdm = model.load(version)
    from medlake.quality.runner import VOCABULARY_TABLES

    absent = [n for n in cdm.table_names if n not in report and n not in VOCABULARY_TABLES and not counts.get(n)]
    if absent:  # (made empty by the store; a quality run finds them empty, not missing)
        out.print(f"not in the folder, so empty in the store: {', '.join(absent)}", highlight=False, markup=False)
    kept = {n: counts[n] for n in cdm.table_names if n not in report and n not in VOCABULARY_TABLES and counts.get(n)}
    if kept:  # a table in the folder replaces the store's; the others keep the rows of an earlier import or load
        since = f" (imported from {before})" if before and before != str(Path(folder).resolve()) else ""
        err.print(f"warning: not in the folder, kept as the store held them before this import{since}: "
                  + ", ".join(f"{n} {k:,} row{'s' * (k != 1)}" for n, k in kept.items())
                  + "; the store now mixes them with this import's tables: to empty one, put an empty file of it "
                  f"(e.g. {next(iter(kept))}.csv) in the folder and import again", highlight=False, markup=False,
                  soft_wrap=True)
    for name, r in report.items():
        for (field, what), (n, first) in r.notes.items():
            if what == "skipped":
                other = model.load(importer.other_version(version))
                says = (f"not a field of {name} in OMOP CDM v{version}: left out ({n:,} value(s)" + (
                        f", the first: {first})" if n else ")") + (
                        f"; a field of v{other.version}: {importer.switch_to(other.version, held)}"
                        if name in other.table_names and field in other.table(name).field_names else ""))
            elif what == "cut":
                length = cdm.table(name).field(field).length
                says = (f"{n:,} value(s) longer than the {length} characters OMOP CDM v{version} gives the field, "
                        f"cut to {length} (the first: {first}); shorten them in the file to choose what is kept")
            elif what == "swallowed":
                says = (f"{n:,} more row(s) of the file are inside a value whose quote is not closed (the first such "
                        f"value: {first}), in quarantine with its row: close the quote and import again")
            elif what == "nul":
                says = (f"{n:,} value(s) held a NUL character (0x00), removed from the value: no engine but DuckDB "
                        f"can store one (the first: {first})")
            elif what == "stray_quote":
                says = (f'{n:,} line(s) where a quoted value holds a quote that is not doubled (the first: {first}): '
                        'read as the CSV reader goes on past it (`"a"b` as ab; MySQL\'s `\\"` is no escape in CSV, '
                        '`"5\\" tube"` reads `5\\ tube"`): check those values; export with quotes doubled ("") '
                        "(MySQL: FIELDS ESCAPED BY '') and import again")
            elif what == "quoted_empty":
                says = (f'{n:,} value(s) "" (the first: {first}), in a file that quotes its header, as pandas and '
                        "Python's csv write NULL with QUOTE_ALL or QUOTE_NONNUMERIC: loaded as empty texts, which the "
                        "quality checks count as present; if they mean NULL, export them unquoted (pandas: to_csv "
                        "without quoting=)")
            else:
                says = (f"{n:,} value(s) NULL or \\N kept as text (the first: {first}); give --null NULL (or "
                        "--null '\\N') if they mean empty")
            err.print(f"warning: {name}{'.' * bool(field)}{field}: {says}", highlight=False, markup=False,
                      soft_wrap=True)
    for name in [n for n in bad if not report[n].rows]:  # a whole table set aside: the export's form, not a few rows
        err.print(f"warning: {name}: none of its {bad[name]:,} row(s) could be imported (the table is empty): the "
                  f"file is not in the form the import reads (its first reason: `medlake quarantine list --source "
                  f"{importer.quarantine_source(name)}`); fix the export or give the option it names, and import again",
                  highlight=False, markup=False, soft_wrap=True)
    if bad:
        out.print(f"{sum(bad.values()):,} row(s) could not be imported and are in quarantine (source "
                  f"{', '.join(importer.quarantine_source(t) for t in bad)}): see `medlake quarantine list`, fix the "
                  "file(s) and import again", highlight=False, markup=False)


def _quarantine_import(q, folder: Path, files: dict[str, Path], bad) -> None:
    """File a CDM import's bad rows in quarantine; a table's earlier open items are resolved first (its file
    replaced the table; a row still bad is filed again, which reopens its item). Each file's rows are its own
    items, keyed on its path in the import folder and line (identical part files are one by their content)."""
    from medlake.cdm.importer import quarantine_source
    from medlake.landing.store import file_sha256
    from medlake.sources.records import Loc, Rejected

    for table, path in files.items():
        for it in q.items(source=quarantine_source(table), status="open"):
            q.resolve(it.id, f"table re-imported from {path}")
    by_file: dict[Path, list] = {}
    for b in bad:
        by_file.setdefault(b.path, []).append(b)
    for path, rows in by_file.items():
        at = path.relative_to(folder).as_posix()
        q.add_many(quarantine_source(rows[0].table), 0, file_sha256(path),
                   [Rejected(Loc(str(b.path), b.line, field=b.field), b.reason, b.detail, b.raw) for b in rows],
                   keys=[f"{at} line {b.line}" if b.line else f"{at} #{n}" for n, b in enumerate(rows)])


@app.command("simulate")
def simulate_cmd(
    patients: int = typer.Option(1000, "--patients", min=1, help="Number of persons."),
    hospitals: int = typer.Option(3, "--hospitals", min=1, help="Number of hospitals (h1, h2, …)."),
    seed: int = typer.Option(42, "--seed", help="Same seed, same bytes."),
    out_dir: Path = typer.Option(Path("simulated"), "--out", help="Output folder (replaced if it is a former "
                                 "simulate output)."),
    start: str = typer.Option("2015-01-01", "--start", help="First day of care (YYYY-MM-DD)."),
    end: str = typer.Option("2025-12-31", "--end", help="Last day of care (YYYY-MM-DD)."),
    defect_rate: float = typer.Option(0.02, "--defect-rate", help="Share of records carrying each kind of defect."),
    correction_rate: float = typer.Option(0.02, "--correction-rate", help="Share of visits with an admission or "
                                          "registration in error that the HIS cancels (A11), and of inpatient "
                                          "stays with a death recorded in error and taken back (not defects)."),
    discard: bool = typer.Option(False, "--discard", help="Generate and encode everything but keep no bytes (only "
                                 "count them): to measure runs larger than the disk."),
):
    """Simulate a hospital group: HL7 v2, FHIR and CSV feeds with defects, and the ground truth."""
    import datetime as dt

    from rich.progress import MofNCompleteColumn

    from medlake.simulate import simulate

    try:
        first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except ValueError as e:
        raise typer.BadParameter(f"{e}; write dates as YYYY-MM-DD", param_hint="--start/--end")
    with Progress(TextColumn("simulate"), BarColumn(), MofNCompleteColumn(), TextColumn("patients"),
                  TimeRemainingColumn(), console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("simulate", total=patients)
        s = simulate(out_dir, patients=patients, hospitals=hospitals, seed=seed, start=first, end=last,
                     defect_rate=defect_rate, correction_rate=correction_rate, discard=discard,
                     progress=lambda done, total: bar.update(task, completed=done))
    where = f"{s.bytes / 1e6:,.0f} MB counted and discarded" if discard else f"-> {s.out}"
    out.print(f"simulated {s.patients:,} patients in {s.hospitals} hospital(s) {where}", highlight=False)
    t = Table(title="output")
    t.add_column("what")
    t.add_column("count", justify="right")
    for name, n in (("files", s.files), ("HL7 v2 messages", s.messages), ("FHIR resources", s.resources),
                    ("CSV rows", s.rows), ("facts (ground truth)", s.facts),
                    ("defects", sum(s.defects.values()))):
        t.add_row(name, f"{n:,}")
    out.print(t)
    out.print("defects by class: " + (", ".join(f"{k} {v:,}" for k, v in s.defects.items()) or "none"),
              highlight=False)
    if not discard:
        out.print(f"sources: {s.out / 'sources.toml'}   ground truth: {s.out / 'ground_truth'}", highlight=False)


@app.command("listen")
def listen_cmd(
    port: int = typer.Option(2575, "--port", min=0, max=65535, help="TCP port (0: any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    source: Optional[str] = typer.Option(None, "--source", help="Land every message in this source."),
    routes: Optional[Path] = typer.Option(None, "--routes", help="Routing rules: TOML [[route]] tables with "
                                          "source, message_type, sending_application, sending_facility globs."),
    sources: Optional[Path] = typer.Option(None, "--sources", help="The site's sources.toml: listen on the "
                                           "`mllp_port` of each of its sources (not --port), landing in that source."),
    landing: Optional[Path] = typer.Option(None, "--landing", help="Landing folder (default: <data_dir>/landing)."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Stage each message to answer AE "
                                  "(with the field) when it is invalid; off: AA once landed and parsed."),
    max_frame: int = typer.Option(16, "--max-frame", min=1, max=2047, help="Largest message accepted, in MB "
                                  "(e.g. a report with a PDF in OBX-5); a larger one is landed as far as read, "
                                  "answered AR, and its connection closed."),
):
    """Receive HL7 v2 over MLLP: land each message durably (group commit), then answer AA, AE or AR."""
    from medlake.landing import Item, Landing
    from medlake.landing import ingest as ingest_mod
    from medlake.sources import mllp

    if sum(x is not None for x in (source, routes, sources)) != 1:
        raise typer.BadParameter("give one of --source S, --routes FILE or --sources FILE")
    root = landing or settings().landing_dir
    land = Landing(root)
    opts = dict(host=host, validate=validate, max_frame=max_frame << 20)
    if sources:
        srcs = [s for s in _load_sources(sources) if s.mllp_port]
        if not srcs:
            raise typer.BadParameter(f"no [[source]] in {sources} has an `mllp_port`")
        ingest_mod.remember(root, srcs)   # `ingest`, `replay` and `quarantine retry` know them
        listeners = [mllp.Listener(land, Item, mllp.Router(default=s.name), port=s.mllp_port, **opts) for s in srcs]
    else:
        rules, default = mllp.load_routes(routes) if routes else ([], None)
        listeners = [mllp.Listener(land, Item, mllp.Router(rules, default=source or default), port=port, **opts)]

    def line(ss) -> str:
        acks = {k: sum(s.acks[k] for s in ss) for k in ("AA", "AE", "AR")}
        n = {k: sum(getattr(s, k) for s in ss) for k in ("received", "landed", "duplicates", "commits")}
        return (f"received {n['received']:,}: AA {acks['AA']:,}, AE {acks['AE']:,}, AR {acks['AR']:,}; "
                f"landed {n['landed']:,} new, {n['duplicates']:,} duplicate(s), in {n['commits']:,} commit(s)")

    def started(li) -> None:
        err.print(f"listening on {host}:{li.port} -> landing {root}"
                  + (f" as source {li.router.default}" if sources else "") + " (SIGTERM or Ctrl-C to stop)",
                  highlight=False, markup=False, soft_wrap=True)

    try:
        with err.status("listening", spinner="dots") if err.is_terminal else _nothing() as status:
            stats = mllp.run(listeners, on_start=started,
                             tick=(lambda ss: status.update(line(ss))) if status is not None else None)
    except OSError as e:
        raise ValueError(f"cannot listen: {e.strerror or e}; is another listener on that port?") from e
    finally:
        land.close()
    if len(listeners) > 1:
        for li, st in zip(listeners, stats):
            out.print(f"  {li.router.default} (port {li.port}): {line([st])}", highlight=False, markup=False,
                      soft_wrap=True)
    out.print(f"stopped; {line(stats)}", highlight=False, markup=False, soft_wrap=True)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# -- identity vault and EMPI (medlake.identity) -----------------------------------------------------------------
def _user(user: Optional[str]) -> str:
    from medlake.identity.vault import default_user

    return user or default_user()


def _vault():
    from medlake.identity.vault import Vault

    return Vault.open(settings().data_dir)


def _empi_thresholds(link: Optional[float], review: Optional[float]) -> tuple[float, float]:
    from medlake.identity import empi

    cfg = settings().data.get("empi", {})
    return (link if link is not None else float(cfg.get("link_threshold", empi.LINK_THRESHOLD)),
            review if review is not None else float(cfg.get("review_threshold", empi.REVIEW_THRESHOLD)))


@identity_app.command("new-key")
def identity_new_key(key_file: Path = typer.Option(..., "--key-file", help="Key file to create or add to (mode 600).")):
    """Add a new AES-256 key to a key file; it becomes the active key (older keys stay readable)."""
    from medlake.identity import keys

    kid = keys.append_key(key_file)
    out.print(f"key {kid} added to {key_file}; set MEDLAKE_VAULT_KEY_FILE={key_file}, then "
              "`medlake identity rotate-key` re-encrypts the vault with it", highlight=False)


@identity_app.command("rotate-key")
def identity_rotate_key(
    generate: bool = typer.Option(False, "--generate", help="First add a new key to MEDLAKE_VAULT_KEY_FILE."),
    batch: int = typer.Option(1000, "--batch", min=1, help="Rows re-encrypted per short transaction."),
):
    """Re-encrypt every vault value with the active (last) key, batch by batch; the vault stays in use."""
    from medlake.identity import keys

    if generate:
        path = os.environ.get("MEDLAKE_VAULT_KEY_FILE")
        if not path:
            raise ValueError("--generate needs MEDLAKE_VAULT_KEY_FILE (a key file to add the new key to)")
        out.print(f"new key {keys.append_key(path)} added to {path}", highlight=False)
    with _vault() as v:
        with _counting_progress() as bar:
            task = bar.add_task("re-encrypting", total=v.to_rotate())
            moved = v.rotate(batch=batch, between=lambda done: bar.update(task, completed=done))
        after = v.key_status()
    out.print(f"{moved:,} row(s) re-encrypted; rows per key now: "
              + ", ".join(f"{k} {n:,}" for k, n in sorted(after.items())), highlight=False)
    out.print("older keys may now be removed from the key file", highlight=False)


@identity_app.command("status")
def identity_status():
    """The vault: identities, rows per key, the access log and whether its hash chain is intact; and whether it holds
    every value the store has moved into a vault (a vault restored from an older backup does not)."""
    from rich.markup import escape

    from medlake.engines.base import EngineError
    from medlake.identity import staging

    with _vault() as v:
        out.print(f"vault      {v.path}", highlight=False)
        out.print(f"identities {v.count():,}")
        out.print("keys       " + ", ".join(f"{k}{' (active)' if k == v.keys.active_id else ''} {n:,} row(s)"
                                            for k, n in sorted(v.key_status().items())), highlight=False)
        log = v.access_log()
        problems = v.verify_log()
        out.print(f"access log {len(log):,} entr{'y' if len(log) == 1 else 'ies'}; "
                  + ("hash chain intact" if not problems else f"[red]{problems[0]}[/red]"))
        try:
            with open_store(read_only=True) as eng:  # what the store moved into a vault: all in this one?
                missing = staging.missing_in_vault(eng, v)
        except (EngineError, OSError, ValueError) as e:
            out.print(f"staging    not compared: the store does not open ({e})", highlight=False, markup=False)
            return
        read = sorted(v.read_up_to().items(), key=lambda x: x[0][::-1])
        if missing:
            out.print(f"staging    [red]{escape(staging.lacking(v, missing))}[/red]", highlight=False)
        elif not read and v.count():
            out.print("staging    not compared: the vault has no record of the receipts it read (a vault of before "
                      "2026-12-06); the next `medlake empi run` writes it", highlight=False)
        else:
            out.print("staging    every value the store moved is in the vault (patient receipts read: "
                      + (", ".join(f"{s} up to {n}" for (_, s), n in read) or "none") + ")", highlight=False)


@empi_app.command("run")
def empi_run(
    link_threshold: Optional[float] = typer.Option(None, "--link-threshold", help="Match probability to link "
                                                   "(default [empi] link_threshold or 0.95)."),
    review_threshold: Optional[float] = typer.Option(None, "--review-threshold", help="Match probability from which "
                                                     "a pair goes to review (default 0.5)."),
    retrain: bool = typer.Option(False, "--retrain", help="Estimate the model again instead of using the saved one."),
    sources: Optional[Path] = typer.Option(None, "--sources", help="sources.toml (default: the config last used)."),
    user: Optional[str] = typer.Option(None, "--user", help="Who runs it (for the access log)."),
):
    """Move identifying staging columns into the vault, link all identities, update person_ids."""
    from medlake.identity import empi, staging

    link, review = _empi_thresholds(link_threshold, review_threshold)
    cfg = settings()
    if sources:
        srcs = {s.name: (s.hospital, s.system) for s in _load_sources(sources)}
    else:
        try:
            from medlake.landing import ingest as ingest_mod

            srcs = {n: (s.hospital, s.system) for n, s in ingest_mod.known_sources(cfg.landing_dir).items()}
        except (ImportError, OSError, ValueError):
            srcs = {}
    with _vault() as v:
        with open_store() as eng:
            moved = staging.vault_staging(eng, v, srcs)
        if moved["rows_cleared"] and cfg.store.startswith("duckdb:"):
            staging.compact_duckdb(cfg.store.removeprefix("duckdb:").partition("?")[0])
        out.print(f"staging: {moved['identities']:,} identit(ies) into the vault, {moved['merges']:,} new merge(s), "
                  f"{sum(moved['rows_cleared'].values()):,} staging row(s) cleared of identifying values")
        with open_store() as eng:
            with err.status("linking", spinner="dots") if err.is_terminal else _nullctx() as st:
                rep = empi.run(eng, v, who=_user(user), link_threshold=link, review_threshold=review, retrain=retrain,
                               progress=(lambda m: st.update(m)) if st else None)
    out.print(f"run {rep.run_id}: {rep.identities:,} identities, {rep.pairs:,} scored pair(s), {rep.links:,} linked, "
              f"{rep.review:,} to review, {rep.persons:,} persons, {rep.changed:,} person_id change(s); "
              f"model {'estimated (EM)' if rep.trained else 'saved/prior'}; Splink on {rep.backend}; {rep.seconds:.1f} s")


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


@empi_app.command("status")
def empi_status():
    """Identities, persons, review queue, decisions and the last run."""
    from medlake.identity import empi

    with open_store(read_only=True) as eng:
        s = empi.status(eng)
    for k in ("identities", "persons", "pairs", "review_pending", "decisions", "id_changes"):
        out.print(f"{k.replace('_', ' '):<15}{s[k]:,}")
    if s["decision_conflicts"]:
        out.print(f"[yellow]{s['decision_conflicts']:,} accepted/merged pair(s) kept apart by a later reject or unmerge"
                  "[/yellow] (see `medlake empi explain`)")
    if s["last"]:
        r = s["last"]
        out.print(f"last           {r['kind']} {r['run_id']} at {r['recorded_at']} by {r['who']}"
                  + (f", thresholds link {r['link_threshold']} review {r['review_threshold']}"
                     if r["link_threshold"] is not None else ""), highlight=False)


def _pair_keys(engine_, ids: list[str]):
    from medlake.identity import empi

    if len(ids) == 1 and ids[0].isdigit():
        p = empi.pair(engine_, int(ids[0]))
        return (p["source_l"], p["id_l"]), (p["source_r"], p["id_r"])
    if len(ids) == 2:
        return empi.parse_key(ids[0]), empi.parse_key(ids[1])
    raise typer.BadParameter("give a PAIR number from `medlake empi review`, or two identities SOURCE:ID SOURCE:ID")


@empi_app.command("review")
def empi_review(
    limit: int = typer.Option(20, "--limit", help="Pairs to show."),
    user: Optional[str] = typer.Option(None, "--user", help="Who reviews (for the access log)."),
):
    """The review queue: pairs between the thresholds, side by side (a logged plaintext read)."""
    from medlake.identity import empi

    with open_store() as eng:
        queue = empi.review_queue(eng)
    if not queue:
        out.print("review queue empty")
        return
    shown = queue[:limit]
    with _vault() as v:
        recs = {(r["source"], r["source_id"]): r for r in v.read(
            _user(user), "empi review", sorted({k for q in shown for k in ((q["source_l"], q["id_l"]),
                                                                            (q["source_r"], q["id_r"]))}))}
    for q in shown:
        a, b = recs.get((q["source_l"], q["id_l"]), {}), recs.get((q["source_r"], q["id_r"]), {})
        t = Table(title=f"pair {q['pair_id']}: match probability {q['match_probability']:.3f}")
        t.add_column("field")
        t.add_column(f"{q['source_l']}:{q['id_l']}")
        t.add_column(f"{q['source_r']}:{q['id_r']}")
        for f in ("family", "given", "full_name", "id_number", "birth_date", "sex", "phone", "address", "insurance"):
            if a.get(f) or b.get(f):
                same = a.get(f) == b.get(f)
                t.add_row(f, str(a.get(f) or "—"), str(b.get(f) or "—"), style=None if same else "yellow")
        out.print(t)
    out.print(f"{len(queue):,} pair(s) waiting; decide with `medlake empi accept PAIR` or `medlake empi reject PAIR`")


def _decide(kind: str, ids: list[str], reason: str, user: Optional[str]) -> None:
    from medlake.identity import empi

    with open_store() as eng:
        a, b = _pair_keys(eng, ids)
        changed = empi.decide(eng, kind, a, b, _user(user), reason)
    out.print(f"{kind}ed {a[0]}:{a[1]} ~ {b[0]}:{b[1]}; {changed:,} person_id change(s)", highlight=False)


@empi_app.command("accept")
def empi_accept(ids: list[str] = typer.Argument(..., help="PAIR number, or SOURCE:ID SOURCE:ID."),
                reason: str = typer.Option("", "--reason"), user: Optional[str] = typer.Option(None, "--user")):
    """Link a pair (same person); kept in the decision history."""
    _decide("accept", ids, reason, user)


@empi_app.command("reject")
def empi_reject(ids: list[str] = typer.Argument(..., help="PAIR number, or SOURCE:ID SOURCE:ID."),
                reason: str = typer.Option("", "--reason"), user: Optional[str] = typer.Option(None, "--user")):
    """Keep a pair apart (different persons); kept in the decision history."""
    _decide("reject", ids, reason, user)


@empi_app.command("unmerge")
def empi_unmerge(identity: str = typer.Argument(..., help="SOURCE:ID to take out of its person."),
                 reason: str = typer.Option("", "--reason"), user: Optional[str] = typer.Option(None, "--user")):
    """Take one identity out of its person (undo the merges and links that put it there)."""
    from medlake.identity import empi

    with open_store() as eng:
        key = empi.parse_key(identity)
        changed = empi.unmerge(eng, key, _user(user), reason)
        pid = empi.person_id_for(eng, *key)
    out.print(f"{identity} is now person {pid}; {changed:,} person_id change(s)", highlight=False)


@empi_app.command("explain")
def empi_explain(ids: list[str] = typer.Argument(..., help="PAIR number, or SOURCE:ID SOURCE:ID."),
                 user: Optional[str] = typer.Option(None, "--user")):
    """Why two identities are or are not linked: level and match weight per comparison."""
    from medlake.identity import empi

    with open_store() as eng:
        a, b = _pair_keys(eng, ids)
        with _vault() as v:
            x = empi.explain(eng, v, a, b, _user(user))
    t = Table(title=f"{a[0]}:{a[1]} ~ {b[0]}:{b[1]}")
    for c in ("comparison", "left", "right", "level", "weight"):
        t.add_column(c, justify="right" if c == "weight" else "left")
    t.add_row("prior", "", "", "two random identities", f"{x['prior_weight']:+.2f}")
    for c in x["comparisons"]:
        t.add_row(c["comparison"], c["left"], c["right"], c["level"], "" if c["weight"] is None else f"{c['weight']:+.2f}")
    t.add_row("total", "", "", f"match probability {x['match_probability']:.4f}", f"{x['match_weight']:+.2f}")
    out.print(t)
    out.print("blocking: " + (", ".join(x["blocking_rules"]) or "no blocking rule puts them together (never compared)"))
    if x["decisions"]:
        out.print("decisions: " + "; ".join(f"{d['kind']} by {d['who']} ({d['reason']})" for d in x["decisions"]),
                  highlight=False)
    pa_, pb_ = x["person_ids"]
    out.print(f"person_ids: {pa_} and {pb_}: " + ("linked (same person)" if x["same_person"] else "not linked"))


# -- map: local codes to standard concepts -------------------------------------------------------------------------
map_app = typer.Typer(help="Map local codes to standard concepts: gaps, suggestions, review.", no_args_is_help=True)
app.add_typer(map_app, name="map")


def _print_coverage(codes, title: str) -> None:
    from medlake.mapping import gaps as gaps_mod

    t = Table(title=title)
    for c in ("kind", "codes", "gaps", "rows", "rows mapped", "share"):
        t.add_column(c, justify="left" if c == "kind" else "right")
    for kind, d in gaps_mod.coverage(codes).items():
        share = "n/a" if d["share"] is None else f"{100 * d['share']:.1f}%"
        t.add_row("unit (not in all)" if kind == "unit" else kind, f"{d['codes']:,}", f"{d['gaps']:,}",
                  f"{d['rows']:,}", f"{d['mapped_rows']:,}", share)
    out.print(t)


@map_app.command("gaps")
def map_gaps(
    source: Optional[str] = typer.Option(None, "--source", help="Only gaps seen in this source."),
    limit: int = typer.Option(30, "--limit", help="Show at most this many gaps (0: all)."),
    coverage_only: bool = typer.Option(False, "--coverage", help="Only the coverage table."),
):
    """List unmapped source codes per source: rows, patients, units, example values; and the coverage."""
    from medlake.mapping import gaps as gaps_mod

    with open_store() as eng:
        codes = gaps_mod.refresh(eng)
    _print_coverage(codes, "staged code rows that reach a standard concept")
    if coverage_only:
        return
    todo = [c for c in codes if c.status == "gap" and (source is None or source in c.sources)]
    t = Table(title=f"gaps ({len(todo):,})")
    for c in ("id", "kind", "code system", "code", "display", "sources", "rows", "patients", "unit", "median"):
        t.add_column(c, justify="right" if c in ("rows", "patients", "median") else "left", overflow="fold")
    from rich.markup import escape

    for c in todo[: limit or None]:
        t.add_row(c.gap_id, c.kind, escape(c.code_system or ""), escape(c.code), escape(c.display or ""),
                  ", ".join(sorted(c.sources)),
                  f"{c.rows:,}", f"{c.n_persons:,}", c.unit or "",
                  "" if c.value_median is None else f"{c.value_median:g}")
    out.print(t)
    out.print("patients are counted per source as distinct patient identifiers (no identifier is shown); next: "
              "`medlake map suggest`", highlight=False)


@map_app.command("suggest")
def map_suggest(
    top: int = typer.Option(5, "--top", min=1, max=20, help="Candidates kept per gap."),
    limit: int = typer.Option(30, "--limit", help="Show at most this many gaps (0: all)."),
):
    """Rank standard concepts for every gap (code, synonyms, term similarity, unit and values, past decisions)."""
    from rich.markup import escape

    from medlake.mapping import gaps as gaps_mod
    from medlake.mapping import suggest as suggest_mod

    with open_store() as eng:
        codes = [c for c in gaps_mod.refresh(eng) if c.status == "gap"]
        with _counting_progress() as bar:
            task = bar.add_task("suggest", total=len(codes))
            result = suggest_mod.refresh(eng, codes, top=top,
                                         progress=lambda done, total: bar.update(task, completed=done))
    t = Table(title=f"top suggestion per gap ({len(codes):,} gaps)")
    for c in ("id", "code", "display", "concept_id", "concept", "score", "evidence"):
        t.add_column(c, justify="right" if c in ("concept_id", "score") else "left", overflow="fold")
    for c in codes[: limit or None]:
        ss = result.get(c.gap_id) or []
        s = ss[0] if ss else None
        t.add_row(c.gap_id, escape(c.code), escape(c.display or ""), str(s.concept_id) if s else "",
                  escape(s.concept_name) if s else "", f"{s.score:.3f}" if s else "",
                  escape(s.evidence[0]) if s and s.evidence else "")
    out.print(t)
    out.print("review: `medlake map accept ID [CONCEPT_ID]`, `medlake map reject ID [CONCEPT_ID]`, or "
              "`medlake map export FILE.csv` for a spreadsheet", highlight=False)


@map_app.command("accept")
def map_accept(
    gap_id: str = typer.Argument(..., help="Gap id (first column of `medlake map gaps`)."),
    concept_id: Optional[int] = typer.Argument(None, help="Standard concept id (default: the top suggestion)."),
    by: Optional[str] = typer.Option(None, "--by", help="Reviewer (default: $MEDLAKE_USER or the login name)."),
):
    """Accept a mapping: writes SOURCE_TO_CONCEPT_MAP; who and when go to mapping_decision."""
    from medlake.mapping import review

    with open_store() as eng:
        cid = review.accept(eng, gap_id, concept_id, by)
    out.print(f"accepted: gap {gap_id} -> concept {cid}; it applies on the next `medlake transform`", highlight=False)


@map_app.command("reject")
def map_reject(
    gap_id: str = typer.Argument(..., help="Gap id (first column of `medlake map gaps`)."),
    concept_id: Optional[int] = typer.Argument(None, help="The suggested concept that is wrong (omit: no standard "
                                               "concept fits this code)."),
    by: Optional[str] = typer.Option(None, "--by", help="Reviewer (default: $MEDLAKE_USER or the login name)."),
):
    """Reject a suggestion (not suggested again), or record that no standard concept fits."""
    from medlake.mapping import review

    with open_store() as eng:
        review.reject(eng, gap_id, concept_id, by)
    out.print(f"rejected concept {concept_id} for gap {gap_id}" if concept_id is not None else
              f"recorded: no standard concept fits gap {gap_id} (mapped to 0)", highlight=False)


@map_app.command("export")
def map_export(file: Path = typer.Argument(..., help="CSV file to write (UTF-8 with BOM, for spreadsheets).")):
    """Write gaps, their suggestions and current decisions to CSV for review in a spreadsheet."""
    from medlake.mapping import review

    with open_store(read_only=True) as eng:
        n = review.export_csv(eng, file)
    out.print(f"{n:,} row(s) -> {file}; fill the decision column (accept, reject, no_match; change concept_id to "
              "accept another concept), then `medlake map import`", highlight=False)


@map_app.command("import")
def map_import(
    file: Path = typer.Argument(..., help="A reviewed CSV from `medlake map export`."),
    by: Optional[str] = typer.Option(None, "--by", help="Reviewer for rows whose reviewer column is empty."),
):
    """Apply the decisions of a reviewed CSV (all rows checked first; on an error nothing is applied)."""
    from medlake.mapping import review

    with open_store() as eng:
        counts = review.import_csv(eng, file, by)
    out.print("imported: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), highlight=False)


@map_app.command("auto-accept")
def map_auto_accept(
    min_score: float = typer.Option(..., "--min-score", help="Accept top suggestions scoring at least this (0-1]."),
    by: str = typer.Option("auto", "--by", help="Recorded as the reviewer."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be accepted."),
):
    """Accept every undecided gap's top suggestion whose score is at least --min-score."""
    from medlake.mapping import review

    with open_store() as eng:
        done = review.auto_accept(eng, min_score, by=by, dry_run=dry_run)
    out.print(f"{'would accept' if dry_run else 'accepted'} {len(done):,} mapping(s) with score >= {min_score:g}",
              highlight=False)


INTERRUPTED = "error: interrupted; run the command again (a quality run goes on from the tables it had finished)"


def _command_path(argv: list[str]) -> str:
    """The command the arguments name ("medlake quality run"), for a usage error's pointer to its help."""
    cmd, path = typer.main.get_command(app), ["medlake"]
    for a in argv:
        sub = getattr(cmd, "commands", {}).get(a)
        if sub is not None:
            cmd, path = sub, path + [a]
    return " ".join(path)


def main() -> None:
    """Typer handles --help; a usage error is one line and exit 2, medlake's own errors one line and exit 1, a crossed
    gate (typer.Exit) its code, Ctrl-C 130."""
    from medlake.cdm.vocab import VocabError
    from medlake.engines.base import EngineError

    try:
        code = app(standalone_mode=False)  # (usage errors said here in one line, not in a rich box)
    except typer.TyperException as e:  # a usage error (typer's own click's exceptions)
        if type(e).__name__ == "NoArgsIsHelpError":  # the help is printed
            sys.exit(e.exit_code)
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err.print(f"error: {e.format_message()}{hint}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("error: aborted", highlight=False, markup=False)
        sys.exit(1)
    except BrokenPipeError:  # `| head`: the reader has gone; say nothing more (Python would complain at exit)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # (as a program killed by SIGPIPE)
    except config_mod.OptionError as e:  # an option that names nothing there is: a usage error, as typer's
        err.print(f"error: {e} (see '{_command_path(sys.argv[1:])} --help')", highlight=False, markup=False,
                  soft_wrap=True)
        sys.exit(2)
    except (EngineError, VocabError, config_mod.ConfigError, ValueError, OSError, KeyError) as e:
        if os.environ.get("MEDLAKE_DEBUG"):
            raise
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # KeyError's str() is a repr
        msg = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        if isinstance(e, OSError) and e.strerror and e.filename:  # not "[Errno 2] …: '/x'" but what and where
            msg = f"{e.filename}: {e.strerror.lower()}" + (f" ({e.filename2})" if e.filename2 else "")
        err.print(f"error: {msg}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    except (KeyboardInterrupt, RuntimeError) as e:  # DuckDB stops a query on Ctrl-C with RuntimeError
        # (after medlake's own errors: EngineError is a RuntimeError)
        if isinstance(e, RuntimeError) and "interrupted" not in str(e).lower() or os.environ.get("MEDLAKE_DEBUG"):
            raise
        err.print(INTERRUPTED, highlight=False, markup=False, soft_wrap=True)
        sys.exit(130)
    code = code if isinstance(code, int) and not isinstance(code, bool) else 0  # typer.Exit's code
    if code == 130:  # (typer's for Ctrl-C)
        err.print(INTERRUPTED, highlight=False, markup=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
